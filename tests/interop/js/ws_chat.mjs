// xmpp.js (@xmpp/client), a third-party JavaScript XMPP client, over WebSocket (RFC 7395):
// logs in at SERVICE as USER, sends PEER one chat message, and prints each event as a JSON
// line until PEER answers. Exits 0 on the answer, 2 on an error, 3 after 30 s.
//
//   node --experimental-websocket ws_chat.mjs SERVICE DOMAIN USER PASSWORD PEER TEXT
import { client, xml } from "@xmpp/client";

const [service, domain, username, password, peer, text] = process.argv.slice(2);
const say = (event) => console.log(JSON.stringify(event));
const xmpp = client({ service, domain, username, password, resource: "xmppjs" });

const timer = setTimeout(() => {
  say({ event: "error", text: "no answer within 30 s" });
  process.exit(3);
}, 30_000);

xmpp.on("error", (e) => {
  say({ event: "error", text: String(e) });
  process.exit(2);
});

xmpp.on("stanza", async (stanza) => {
  const body = stanza.is("message") ? stanza.getChildText("body") : null;
  if (!body) return;
  say({ event: "message", from: stanza.attrs.from, body });
  if (stanza.attrs.from.startsWith(peer)) {
    clearTimeout(timer);
    await xmpp.stop();
    process.exit(0);
  }
});

xmpp.on("online", async (address) => {
  say({ event: "online", jid: address.toString() });
  await xmpp.send(xml("presence"));
  await xmpp.send(xml("message", { to: peer, type: "chat" }, xml("body", {}, text)));
});

await xmpp.start();
