// A copilotd client in Node.js, from the published protos alone:
// create a session with one tool, send a message, stream its events (and run
// the tool when the model calls it), list, delete.
//
//   cd examples/node && npm ci && node client.js [SESSION_ID] [PROMPT]
//
// The offline model calls the tool for a prompt line such as
//   call word_count {"text": "one two three"}
//
// It connects to $COPILOTD_SOCKET, else $XDG_RUNTIME_DIR/copilotd/copilotd.sock,
// else /tmp/copilotd-$UID/copilotd.sock -- the daemon's own defaults.
"use strict";

const os = require("os");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.join(__dirname, "..", "..", "protos");
const REASON_KEY = "copilot-error-reason";

function socketPath() {
  if (process.env.COPILOTD_SOCKET) return process.env.COPILOTD_SOCKET.replace(/^unix:/, "");
  if (process.env.XDG_RUNTIME_DIR) {
    return path.join(process.env.XDG_RUNTIME_DIR, "copilotd", "copilotd.sock");
  }
  return path.join(os.tmpdir(), `copilotd-${process.getuid()}`, "copilotd.sock");
}

function loadService() {
  const definition = protoLoader.loadSync("copilot_client/proto/v1/copilot.proto", {
    includeDirs: [PROTOS],
    keepCase: true, // field names as in the .proto: session_id, last_sequence, ...
    longs: Number, // uint64 sequence numbers fit easily
    enums: String,
    defaults: true,
    oneofs: true, // event.data names the payload that is set
  });
  return grpc.loadPackageDefinition(definition).copilot.v1.CopilotService;
}

// Unary calls as promises; a failure carries the daemon's reason trailer.
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

// The one tool this client declares and answers itself. skip_permission: it
// only counts words, so its calls need no permission request first.
const WORD_COUNT = {
  name: "word_count",
  description: "Counts the words of a text",
  skip_permission: true,
  parameters_json_schema: JSON.stringify({
    type: "object",
    properties: { text: { type: "string" } },
  }),
};

function countWords(argumentsJson) {
  const { text = "" } = JSON.parse(argumentsJson || "{}");
  return String(text.split(/\s+/).filter(Boolean).length);
}

function reasonOf(error) {
  const values = error.metadata ? error.metadata.get(REASON_KEY) : [];
  return values.length ? String(values[0]) : "";
}

function describe(error) {
  const code = Object.keys(grpc.status).find((name) => grpc.status[name] === error.code);
  const reason = reasonOf(error);
  return `${code}${reason ? ` (${reason})` : ""}: ${error.details}`;
}

// Subscribe to the session's events, send the prompt once the stream is live,
// and collect everything until session.idle ends the turn.
function runTurn(client, session, prompt) {
  return new Promise((resolve, reject) => {
    const seen = { types: [], deltas: 0, answer: null, messageId: null };
    let sent = false;
    const stream = client.StreamEvents({
      session_id: session.session_id,
      after_sequence: session.last_sequence,
    });
    stream.on("data", async (response) => {
      for (const event of response.events) {
        if (event.type === "assistant.message_delta") {
          seen.deltas += 1;
          continue;
        }
        seen.types.push(event.type);
        console.log(`event ${event.sequence} ${event.type}`);
        if (event.type === "assistant.message") seen.answer = event.assistant_message.content;
        if (event.type === "external_tool.requested") {
          // The call waits (durably) until a client records its result.
          const request = event.external_tool_requested;
          console.log(`tool call ${request.tool_name} ${request.arguments_json}`);
          call(client, "HandlePendingToolCall", {
            session_id: session.session_id,
            tool_call_id: request.tool_call_id,
            result: { text_result_for_llm: countWords(request.arguments_json) },
          }).catch((error) => {
            stream.cancel();
            reject(error);
          });
        }
        if (event.type === "tool.execution_complete") {
          const done = event.tool_execution_complete;
          console.log(`tool result ${done.tool_name}: ${done.result.text_result_for_llm}`);
        }
        if (event.type === "session.idle") {
          stream.cancel();
          resolve(seen);
          return;
        }
      }
      if (response.live && !sent) {
        // The first response means the subscription is live: nothing is missed.
        sent = true;
        try {
          const reply = await call(client, "SendMessage", { session_id: session.session_id, prompt });
          seen.messageId = reply.message_id;
          console.log(`sent message ${reply.message_id}`);
        } catch (error) {
          stream.cancel();
          reject(error);
        }
      }
    });
    stream.on("error", (error) => {
      if (error.code !== grpc.status.CANCELLED) reject(error);
    });
  });
}

async function main() {
  const sessionId = process.argv[2] || `node-example-${process.pid}`;
  const prompt = process.argv[3] || "Hello from Node.js";
  const CopilotService = loadService();
  const client = new CopilotService(`unix:${socketPath()}`, grpc.credentials.createInsecure());
  try {
    const ping = await call(client, "Ping", {});
    console.log(`connected to copilotd ${ping.version}`);

    const created = await call(client, "CreateSession", {
      config: { session_id: sessionId, tools: [WORD_COUNT] },
    });
    const session = created.session;
    console.log(`created ${session.session_id} (model ${session.model})`);

    const turn = await runTurn(client, session, prompt);
    console.log(`streamed ${turn.deltas} deltas`);
    console.log(`answer: ${turn.answer}`);

    const listed = await call(client, "ListSessions", { page_size: 1000 });
    const ids = listed.sessions.map((s) => s.session_id);
    const mine = listed.sessions.find((s) => s.session_id === sessionId);
    console.log(`listed ${ids.length} session(s); ${sessionId} has ${mine.message_count} messages`);

    await call(client, "DeleteSession", { session_id: sessionId });
    console.log(`deleted ${sessionId}`);
    try {
      await call(client, "GetSession", { session_id: sessionId });
      console.log("still there?!");
    } catch (error) {
      console.log(`after delete: ${describe(error)}`);
    }
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(`error: ${error.details ? describe(error) : error.message}`);
  process.exit(1);
});
