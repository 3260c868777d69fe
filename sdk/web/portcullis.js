// A minimal browser client for a Portcullis gateway listener with
// transport = "websocket" and codec = "json" (proto/PROTOCOL.md §4.3, §15):
// one JSON envelope per WebSocket text message.
//
//   const gw = await Portcullis.connect("ws://127.0.0.1:7002/");
//   const me = await gw.login(token);              // LoginReply as an object
//   const echoed = await gw.call(1000, "hello");   // a business command
//   gw.onpush = (env) => { ... };                  // pushes and deliveries
//
// A classic script (no module), so that the page also works from file://.
"use strict";

class PortcullisError extends Error {
  constructor(code, message, cmd) {
    super(`gateway error ${code}: ${message}`);
    this.code = code;
    this.cmd = cmd;
  }
}

class Portcullis {
  static CMD = { HEARTBEAT: 1, LOGIN: 2, LOGOUT: 3, KICK: 4, JOIN_GROUP: 5, LEAVE_GROUP: 6,
                 SEND_TO_USER: 7, SEND_TO_USERS: 8, SEND_TO_GROUP: 9, ACK: 10, RESUME: 11, ERROR: 12 };
  static FLAG_RESPONSE = 1;

  /** Opens a WebSocket to `url`; resolves once it is open. */
  static connect(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.onopen = () => resolve(new Portcullis(ws));
      ws.onerror = () => reject(new Error(`cannot connect to ${url}`));
    });
  }

  constructor(ws) {
    this.ws = ws;
    this.seq = 0;
    this.pending = new Map(); // seq -> {resolve, reject}
    this.lastServerSeq = 0;
    this.onpush = () => {};
    this.onclose = () => {};
    ws.onmessage = (e) => this.receive(JSON.parse(e.data));
    ws.onclose = (e) => {
      for (const p of this.pending.values()) p.reject(new Error(`closed (${e.code})`));
      this.pending.clear();
      this.onclose(e);
    };
  }

  receive(env) {
    if (env.server_seq) this.lastServerSeq = env.server_seq;
    const waiting = env.seq ? this.pending.get(env.seq) : undefined;
    if (waiting && (env.flags & Portcullis.FLAG_RESPONSE)) {
      this.pending.delete(env.seq);
      if (env.cmd === Portcullis.CMD.ERROR) {
        const e = JSON.parse(env.payload || "{}");
        waiting.reject(new PortcullisError(e.code || 0, e.message || "", e.cmd || 0));
      } else {
        waiting.resolve(env);
      }
      return;
    }
    this.onpush(env);
  }

  /** Sends a request; resolves with the answer's envelope. */
  request(cmd, payload) {
    const seq = ++this.seq;
    const env = { cmd, seq };
    if (payload !== undefined && payload !== "") env.payload = payload;
    if (this.lastServerSeq) env.ack = this.lastServerSeq;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.ws.send(JSON.stringify(env));
    });
  }

  /** LOGIN with a signed token; resolves with the LoginReply. */
  async login(token) {
    const env = await this.request(Portcullis.CMD.LOGIN, JSON.stringify({ token }));
    return JSON.parse(env.payload);
  }

  /** A business command with a text payload; resolves with the answer's payload. */
  async call(cmd, text) {
    const env = await this.request(cmd, text);
    return env.payload || "";
  }

  /** SEND_TO_USER; resolves with the number of devices reached. */
  async sendToUser(userId, text) {
    const env = await this.request(Portcullis.CMD.SEND_TO_USER, JSON.stringify({ user_id: userId, payload: text }));
    return JSON.parse(env.payload || "{}").delivered || 0;
  }

  heartbeat() {
    return this.request(Portcullis.CMD.HEARTBEAT);
  }

  close() {
    this.ws.close(1000);
  }
}
