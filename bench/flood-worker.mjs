// The flood of bench/flood.ts, in a process of its own: bad attempts from ever new addresses and
// login IDs at `rate` a second until told to stop (an IPC message "stop"); reports the statuses.
//
// The attacker's machines are not the server's. Here they share two cores, so the flood runs at
// the lowest CPU priority (nice 19): it gets the cycles the server leaves idle, and doesn't take
// them from the server's argon2 threads, which is what the benchmark measures. bench/flood.ts
// reports the rate it reached, and fails when it fell short of the one asked for.
import http from "node:http";
import os from "node:os";

os.setPriority(19);
const port = Number(process.argv[2]);
const rate = Number(process.argv[3]);
// Optional: the hosted sign-in form instead of the JSON API (a form path, its cookies, the Origin).
const [formPath, formCookie, formOrigin] = process.argv.slice(4);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
const statuses = {};
let sent = 0;
let flooding = true;
let answered = 0; // answers received while flooding
const inflight = new Set();

process.on("message", (m) => {
  if (m === "stop") flooding = false;
});

function attempt(i) {
  return new Promise((resolve) => {
    const credentials = { login_id: `victim${i % 5000}`, password: `guess ${i}` };
    const body = formPath ? new URLSearchParams(credentials).toString() : JSON.stringify(credentials);
    const req = http.request(
      {
        port,
        host: "127.0.0.1",
        method: "POST",
        path: formPath ?? "/api/v1/login",
        agent,
        headers: {
          "content-type": formPath ? "application/x-www-form-urlencoded" : "application/json",
          ...(formPath ? { cookie: formCookie, origin: formOrigin } : {}),
          "x-forwarded-for": `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
        },
      },
      (res) => {
        res.resume();
        res.on("end", () => {
          quarter++;
          if (flooding) answered++;
          statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1;
          resolve();
        });
      },
    );
    req.on("error", () => {
      statuses[0] = (statuses[0] ?? 0) + 1;
      resolve();
    });
    req.end(body);
  });
}

// Every 250 ms, how many answers came back in that quarter second (the bench waits for the flood
// to be answered at its rate before it measures).
let quarter = 0;
const ticker = setInterval(() => {
  process.send({ quarter });
  quarter = 0;
}, 250);

const start = Date.now();
while (flooding) {
  const due = Math.floor(((Date.now() - start) / 1000) * rate);
  while (sent < due) {
    const p = attempt(sent++).finally(() => inflight.delete(p));
    inflight.add(p);
  }
  await new Promise((r) => setTimeout(r, 5));
}
clearInterval(ticker);
const seconds = (Date.now() - start) / 1000;
const answeredWhileFlooding = answered;
await Promise.all(inflight);
agent.destroy();
process.send({ sent, answered: answeredWhileFlooding, seconds, statuses }, () => process.exit(0));
