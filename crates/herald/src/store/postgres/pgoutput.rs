//! Decoder of the pgoutput logical replication messages (to be written).
