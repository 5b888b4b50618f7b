// The live page: follows /events (the TaleWeave event feed), lists rooms and NPCs, shows turns as
// they stream, and lets a person set a name, play an NPC and type for it. No build step.
"use strict";

const MAX_EVENTS = 300; // events kept in the list
const MAX_LIVE = 12; // turns kept in the live view
const pageQuery = new URLSearchParams(location.search);
const session = pageQuery.get("session") || "";
const token = pageQuery.get("token") || ""; // the server's token, when it has one: passed on to /events

const state = {
  socket: null,
  client: null, // this page's client id
  npcs: new Map(), // agent_id -> {name, location, description, backstory, items}
  players: {}, // player (display name, else client id) -> character name
  mine: null, // the character name this page plays
  live: new Map(), // agent_id -> the element of its latest turn
};

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- the socket -------------------------------------------------------------------------------

function connect(delay = 1000) {
  const query = new URLSearchParams({ extended: "1" }); // the live stream and error events too
  if (session) query.set("session", session);
  if (token) query.set("token", token);
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/events?${query}`;
  const socket = new WebSocket(url);
  state.socket = socket;
  socket.onopen = () => { setConnection("connected", true); delay = 1000; };
  socket.onmessage = (message) => handle(JSON.parse(message.data));
  socket.onclose = (close) => {
    setConnection(`disconnected (${close.code}); retrying…`, false);
    state.mine = null;
    renderPlayer();
    setTimeout(() => connect(Math.min(delay * 2, 15000)), delay);
  };
}

function send(frame) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(frame));
}

function setConnection(text, open) {
  const node = $("connection");
  node.textContent = text;
  node.classList.toggle("open", open);
}

// --- events -----------------------------------------------------------------------------------

const handlers = {
  id(event) {
    state.client = event.client;
    state.npcs.clear();
    setConnection(`connected as ${event.client}`, true);
  },
  snapshot(event) {
    for (const room of event.world.rooms) for (const character of room.characters) learn(character);
    renderRooms();
  },
  generate(event) {
    if (event.entity && event.entity.type === "character") learn(event.entity);
    else if (!event.entity && !state.npcs.has(event.name)) state.npcs.set(event.name, { name: event.name, location: "" });
    renderRooms();
    log(event, "generate", event.entity ? `${event.name} is here` : `${event.name} appeared`);
  },
  prompt(event) {
    learn(event.character);
    if (event.client && event.client === state.client) showPrompt(event);
    log(event, "prompt", `${event.character.name}: ${event.prompt}`);
  },
  reply(event) {
    learn(event.character);
    log(event, "reply", `${event.speaker.name}: ${event.text}`);
  },
  action(event) {
    learn(event.character);
    const params = Object.entries(event.parameters || {})
      .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`);
    const details = params.length ? ` (${params.join(", ")})` : "";
    log(event, "action", `${event.character.name} ${event.action}${details}`);
  },
  result(event) { log(event, "result", `${event.character.name}: ${event.result}`); },
  status(event) { log(event, "status", event.text); },
  player(event) {
    if (event.client_id === state.client) {
      state.mine = event.status === "join" ? event.character : null;
      renderPlayer();
    }
    const who = event.client; // the display name, else the client id
    log(event, "player", event.status === "join" ? `${who} plays ${event.character}` :
      `${who} left ${event.character}; the LLM plays it again`);
  },
  players(event) {
    state.players = event.players;
    renderRooms();
  },
  stream: stream,
  error(event) {
    showNotice(`${event.code}: ${event.message}`);
    log(event, "error", `${event.code}: ${event.message}`);
  },
};

function handle(event) {
  const handler = handlers[event.type];
  if (handler) handler(event);
}

function learn(character) {
  if (!character || character.type !== "character") return;
  const id = (character.attributes && character.attributes.agent_id) || character.name;
  const location = character.attributes && character.attributes.location;
  const known = state.npcs.get(id);
  state.npcs.set(id, { ...character, location: location || "" });
  if (!known || known.location !== (location || "") || known.name !== character.name) renderRooms();
}

function log(event, kind, text) {
  const list = $("events");
  const item = element("li", kind);
  item.dataset.type = event.type;
  item.append(element("span", "kind", kind), element("span", "text", text));
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function showNotice(text) {
  const notice = $("notice");
  notice.textContent = text;
  notice.hidden = false;
  clearTimeout(showNotice.timer);
  showNotice.timer = setTimeout(() => { notice.hidden = true; }, 6000);
}

// --- the live, chunk-level view of turns ----------------------------------------------------

function stream(event) {
  let box = state.live.get(event.agent_id);
  if (event.phase === "start" || !box || box.dataset.turn !== event.turn_id) {
    box = element("article", "live streaming");
    box.dataset.agent = event.agent_id;
    box.dataset.turn = event.turn_id;
    box.append(element("span", "speaker", event.character), element("span", "state", "speaking…"));
    const live = $("live");
    live.querySelector(".empty")?.remove();
    state.live.get(event.agent_id)?.classList.remove("streaming");
    state.live.set(event.agent_id, box);
    live.prepend(box);
    while (live.children.length > MAX_LIVE) live.lastChild.remove();
  }
  box.querySelector(".speaker").textContent = event.character; // the name, once the spec told it
  if (event.phase === "open") {
    const tag = element("span", `tag tag-${event.tag.toLowerCase()}`);
    tag.dataset.index = event.index;
    const name = event.attrs && event.attrs.name;
    if (name) tag.textContent = `[${name}] `;
    box.append(tag);
  } else if (event.phase === "chunk") {
    const tag = box.querySelector(`.tag[data-index="${event.index}"]`);
    if (tag) tag.textContent += event.text;
  } else if (event.phase === "close") {
    box.querySelector(`.tag[data-index="${event.index}"]`)?.classList.add("closed");
  } else if (event.phase === "end") {
    box.classList.remove("streaming");
    box.querySelector(".state").textContent = event.reason === "completed" ? "" : event.reason;
  }
}

// --- rooms and NPCs -------------------------------------------------------------------------

function renderRooms() {
  const rooms = new Map();
  for (const [id, npc] of state.npcs) {
    const room = npc.location || "Unknown location";
    if (!rooms.has(room)) rooms.set(room, []);
    rooms.get(room).push([id, npc]);
  }
  const container = $("rooms");
  container.replaceChildren();
  if (!rooms.size) container.append(element("p", "empty", "No NPC has been seen yet."));
  const byCharacter = Object.fromEntries(Object.entries(state.players).map(([client, name]) => [name, client]));
  for (const [name, npcs] of [...rooms].sort(([a], [b]) => a.localeCompare(b))) {
    const room = element("div", "room");
    room.dataset.room = name;
    room.append(element("h3", "", name));
    for (const [id, npc] of npcs) room.append(npcRow(id, npc, byCharacter[npc.name]));
    container.append(room);
  }
}

function npcRow(id, npc, player) {
  const row = element("div", "npc");
  row.dataset.agent = id;
  const about = element("span", "about");
  about.append(element("span", "who", npc.name));
  if (npc.description) about.append(element("span", "desc", npc.description));
  if (player) about.append(element("span", "played", `played by ${player}`));
  row.append(about);
  if (npc.name === state.mine) {
    row.classList.add("mine");
    const button = element("button", "give-back", "Give back");
    button.onclick = () => send({ type: "player", become: null });
    row.append(button);
  } else if (!player) {
    const button = element("button", "play", "Play");
    button.onclick = () => send({ type: "player", become: npc.name });
    row.append(button);
  }
  return row;
}

// --- playing an NPC ---------------------------------------------------------------------------

function renderPlayer() {
  $("player-panel").hidden = !state.mine;
  $("player-character").textContent = state.mine || "";
  setPromptWaiting(false, "Waiting for your character's turn…");
  renderRooms();
}

function showPrompt(event) {
  setPromptWaiting(true, event.prompt || "(your turn)");
  // Each action is an OpenAI tool: a tag of the NPC or one of its tools, written ~name:param=value.
  const actions = (event.actions || []).map((a) => {
    const params = Object.keys(a.function.parameters.properties || {});
    return `~${a.function.name}${params.length ? `:${params.map((p) => `${p}=…`).join(",")}` : ""}`;
  });
  $("actions").textContent = `Plain words are said aloud. Also: ${actions.join(", ")}, ~anything:param=value`;
  $("input-box").focus();
}

function setPromptWaiting(waiting, text) {
  const prompt = $("prompt-text");
  prompt.textContent = text;
  prompt.classList.toggle("waiting", waiting);
  $("input-box").disabled = !waiting;
  $("send-button").disabled = !waiting;
}

$("input-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const box = $("input-box");
  if (!box.value.trim()) return;
  send({ type: "input", input: box.value });
  box.value = "";
  setPromptWaiting(false, "Sent. Waiting for your character's next turn…");
});

$("input-box").addEventListener("keydown", (key) => {
  if (key.key === "Enter" && !key.shiftKey) {
    key.preventDefault();
    $("input-form").requestSubmit();
  }
});

$("name-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  const name = $("name-input").value.trim();
  if (name) send({ type: "player", name });
});

$("session").textContent = session ? `· ${session}` : "";
connect();
