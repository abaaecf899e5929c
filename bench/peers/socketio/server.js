// The Socket.IO side of herald-bench's fanout, idle and churn workloads.
// Protocol as herald-bench --target socketio speaks it:
//   "sub" (room, ack)       -> join the room, then ack
//   "pub" {topic, data}     -> emit "tick" with data to everyone else in the room
// Usage: node server.js [port]   (default 4200; websocket transport only)
const { createServer } = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || 4200);
const httpServer = createServer();
const io = new Server(httpServer, { transports: ["websocket"], serveClient: false });

io.on("connection", (socket) => {
  socket.on("sub", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack();
  });
  socket.on("pub", (msg) => {
    if (msg && typeof msg.topic === "string") socket.to(msg.topic).emit("tick", msg.data);
  });
});

httpServer.listen(port, "127.0.0.1", () => console.error(`socket.io peer on 127.0.0.1:${port} (pid ${process.pid})`));
