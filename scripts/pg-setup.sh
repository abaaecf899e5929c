#!/usr/bin/env bash
# Makes the local PostgreSQL ready for Herald's tests: running, with logical
# replication on (wal_level=logical needs a restart) and room for the
# replication slots of suites that run side by side. Idempotent.
set -euo pipefail
PGHOST=${PGHOST:-127.0.0.1}
PGUSER=${PGUSER:-postgres}
export PGHOST PGUSER
cluster_version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"

start() {
  if ! pg_isready -h "$PGHOST" -q 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$cluster_version" main start
  fi
  for _ in $(seq 1 50); do pg_isready -h "$PGHOST" -q && return 0; sleep 0.2; done
  echo "PostgreSQL did not come up"; return 1
}

start
setting() { psql -XAtq -d postgres -c "SHOW $1"; }
restart=0
want() { # name value
  if [ "$(setting "$1")" != "$2" ]; then
    psql -XAtq -d postgres -c "ALTER SYSTEM SET $1 = '$2'"
    restart=1
  fi
}
want wal_level logical
want max_replication_slots 128
want max_wal_senders 128
# A test may stop a consumer on purpose; this bounds what its slot can hold back.
want max_slot_wal_keep_size 1GB
if [ "$restart" = 1 ]; then
  echo "restarting PostgreSQL for logical replication settings"
  pg_ctlcluster --skip-systemctl-redirect "$cluster_version" main restart
  start
fi
# Leftovers of earlier test runs: inactive slots first (a database with a slot
# cannot be dropped), replication origins, then the databases.
psql -XAtq -d postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
  WHERE NOT active AND database LIKE 'herald_test_%'" >/dev/null
psql -XAtq -d postgres -c "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin
  WHERE roname LIKE 'herald_test_%'" >/dev/null || true
for db in $(psql -XAtq -d postgres -c "SELECT datname FROM pg_database WHERE datname LIKE 'herald_test_%'"); do
  psql -XAtq -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
done
echo "PostgreSQL ready: wal_level=$(setting wal_level), max_replication_slots=$(setting max_replication_slots)"
