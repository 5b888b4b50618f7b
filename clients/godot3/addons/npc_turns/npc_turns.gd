# NPC turns client for Godot 3.x (WebSocketClient). Registered as the autoload `NpcTurns`.
#
# Connects to the NPC turn server's /ws socket, answers `get_agent_state` from the providers
# the game registers, turns every server frame into a signal, confirms each turn with
# `agent_turn_result` when it ends and runs the tool calls the NPC makes.
# Kept in step with the Godot 4 addon (clients/godot/addons/npc_turns/npc_turns.gd): same
# names, same order of functions, same behaviour. See clients/README.md.
extends Node
class_name NpcTurnsClient

# The socket is open (also after each reconnect).
signal connected()
# The open socket was lost. `code` is the WebSocket close code (-1 when unknown).
# `reconnecting` is false after disconnect_from_server() or a session take-over (4000).
signal disconnected(code, reconnecting)
# A turn began. `event_id` is "" for a continuation turn after tool results.
signal turn_started(agent_id, turn_id, event_id)
# Tag number `index` (0, 1, 2... per turn) opened; `attrs` maps attribute names to strings.
signal tag_opened(agent_id, turn_id, index, tag, attrs)
# More text of the open tag (entities already decoded; never rely on chunk boundaries).
signal tag_chunk(agent_id, turn_id, index, tag, text)
# The tag is complete.
signal tag_closed(agent_id, turn_id, index, tag)
# The turn ended: `reason` is "completed", "fallback" (no LLM answered: the NPC spoke one of its
# fallback_lines) or "error"; `usage` is the token usage or {}.
signal turn_finished(agent_id, turn_id, reason, usage)
# The turn was cut: `reason` is "new_event", "disconnected", "shutdown"...;
# `by_event_id` is the id of the event that cut it, or "".
signal turn_interrupted(agent_id, turn_id, reason, by_event_id)
# The server reported a problem; `ref` says what it concerns (may be {}).
signal server_error(code, message, ref)
# A memory of add_memory() is kept: `memory_id` names it to forget it.
signal memory_added(agent_id, memory_id, scope)
# Memories were forgotten (forget_memory(), forget_memories()).
signal memories_forgotten(agent_id, memory_ids, count)
# The answer to list_memories(): {memory_id, text, kind, pinned, scope, agent_id} each, oldest
# first; `scopes` says whose ("agent", "group:<name>").
signal memories_listed(agent_id, memories, scopes)

const TAKEN_OVER_CODE := 4000
const MAX_OUTBOX := 256
const MAX_ENDED := 256
const FAILURE_KEY := "__npc_turns_failure__"

# ws:// or wss:// address of the server's /ws socket.
export var url := "ws://127.0.0.1:8000/ws"
# Sent as ?token= when not empty.
export var token := ""
# Sent as ?session= when not empty (the server's default session otherwise).
export var session := ""
# Reconnect delays: reconnect_min_s, doubled after each failed attempt, up to reconnect_max_s.
export var reconnect_min_s := 0.5
export var reconnect_max_s := 30.0
# A connection attempt that is not open after this long is abandoned and retried.
export var connect_timeout_s := 10.0
# Keepalive: a `ping` every ping_interval_s; no `pong` within pong_timeout_s drops the socket.
export var ping_interval_s := 15.0
export var pong_timeout_s := 10.0
# Whether tool results ask the server for a continuation turn.
export var continue_after_tools := true

# Round trip of the last ping in milliseconds, -1 before the first pong.
var latency_ms := -1

var _ws: WebSocketClient = null
var _open := false
var _wanted := false
var _close_code := -1
var _attempt := 0
var _next_try_ms := 0
var _connect_deadline_ms := 0
var _next_ping_ms := 0
var _ping_sent_ms := 0
var _pong_deadline_ms := 0
var _ping_count := 0
var _event_count := 0
var _id_prefix := ""
var _rng := RandomNumberGenerator.new()
var _agents := {}  # agent_id -> FuncRef(agent_id) -> Dictionary
var _tools := {}  # tool name -> FuncRef(agent_id, args) -> Variant
var _turns := {}  # turn_id -> Turn, until it has ended and been confirmed
var _ended := []  # ids of turns already confirmed and ended, oldest first
var _outbox := []  # frames sent while not connected: {"to": _target(), "frame"}
var _unsettled := {}  # turn_id -> {"frame", "refused"}: results of turns cut_by_link


# One turn's buffer: the tags as received and what the game reported about playing them.
class Turn:
	var agent_id := ""
	var turn_id := ""
	var tags := []  # by index: {"tag", "attrs", "text"}, null for an index never seen
	var report = null  # Array of tags from report_played(), or null
	var open_index := -1  # the tag open now, -1 for none
	var cut_index := -1  # set_played_text(): tag shown up to cut_text, nothing after it
	var cut_text := ""
	var held := false
	var status := ""  # "completed" or "interrupted" once the turn ended (set before its end signal)
	var confirmed := false
	var cut_by_link := false  # ended by the client as its socket closed: the server may run it on


func _ready() -> void:
	pause_mode = Node.PAUSE_MODE_PROCESS
	_rng.randomize()
	_id_prefix = "%08x" % (_rng.randi() & 0x7fffffff)


# Starts connecting (and reconnecting whenever the socket is lost). Empty arguments keep
# the current `url`, `token` and `session`.
func connect_to_server(p_url := "", p_token := "", p_session := "") -> void:
	if p_url != "":
		url = p_url
	if p_token != "":
		token = p_token
	if p_session != "":
		session = p_session
	disconnect_from_server()
	_wanted = true
	_attempt = 0
	_next_try_ms = 0


# Closes the socket and stops reconnecting.
func disconnect_from_server() -> void:
	_wanted = false
	if _ws != null:
		_lost(1000)


# Whether the socket is open now.
func is_connected_to_server() -> bool:
	return _open


# Registers an NPC: `provider.call_func(agent_id)` returns its state (the agent spec
# Dictionary, at least {"name": ...}); it answers the server's get_agent_state.
func register_agent(agent_id: String, provider: FuncRef) -> void:
	_agents[agent_id] = provider


# Forgets an NPC's state provider.
func unregister_agent(agent_id: String) -> void:
	_agents.erase(agent_id)


# Registers a tool: `handler.call_func(agent_id, args)` runs it and returns its output (any
# JSON value), or tool_failed("why") to report a failure to the NPC.
func register_tool(tool_name: String, handler: FuncRef) -> void:
	_tools[tool_name] = handler


# Forgets a tool.
func unregister_tool(tool_name: String) -> void:
	_tools.erase(tool_name)


# What a tool handler returns when it failed; the NPC reads `message` with ok=false.
static func tool_failed(message: String) -> Dictionary:
	return {FAILURE_KEY: message}


# Tells an NPC that something happened that it should react to (starts a turn and cuts a
# turn it is streaming). `event`: {kind?, source?, text?, data?}. Returns the event_id.
func interact(agent_id: String, event: Dictionary) -> String:
	_event_count += 1
	var event_id := "%s-%d" % [_id_prefix, _event_count]
	_send({"type": "interaction_event", "agent_id": agent_id, "event_id": event_id, "event": event})
	return event_id


# Tells one NPC (a String) or several (an Array) something they should know; starts no turn.
func notify(agent_ids, event: Dictionary) -> void:
	var ids: Array = [agent_ids] if agent_ids is String else []
	if ids.empty():
		for agent_id in agent_ids:
			ids.append(agent_id)
	_send({"type": "notification_event", "agent_ids": ids, "event": event})


# Tells an NPC to remember `text` (see docs/protocol.md, "Memories"): pinned, it is in every
# prompt; else it is recalled when an event refers to it. `scope` "agent" (this NPC) or
# "group:<name>" (every NPC whose state lists the group in "groups"). Answered by
# memory_added, or server_error when refused.
func add_memory(agent_id: String, text: String, pinned := false, scope := "agent") -> void:
	_send({"type": "memory_add", "agent_id": agent_id, "text": text, "pinned": pinned, "scope": scope})


# Forgets one memory by the id memory_added gave. Answered by memories_forgotten.
func forget_memory(agent_id: String, memory_id: String, scope := "agent") -> void:
	_send({"type": "memory_forget", "agent_id": agent_id, "memory_id": memory_id, "scope": scope})


# Forgets the memories having every word of `query` (the server refuses to forget more than
# its limit at once, and says how many matched). Answered by memories_forgotten.
func forget_memories(agent_id: String, query: String, scope := "agent") -> void:
	_send({"type": "memory_forget", "agent_id": agent_id, "query": query, "scope": scope})


# Asks for an NPC's memories (its own and its groups', or one `scope`'s), those having every
# word of `query` when it is not empty. Answered by memories_listed.
func list_memories(agent_id: String, query := "", scope := "") -> void:
	var frame := {"type": "memory_list", "agent_id": agent_id}
	if query != "":
		frame["query"] = query
	if scope != "":
		frame["scope"] = scope
	_send(frame)


# Reports how far the game has shown a turn: tag `index` up to `text`, and none of the tags
# after it. Call it as the text appears (e.g. from a typewriter effect); the last call wins.
func set_played_text(agent_id: String, turn_id: String, index: int, text: String) -> void:
	var turn: Turn = _find_turn(agent_id, turn_id)
	if turn != null:
		turn.cut_index = index
		turn.cut_text = text


# Reports exactly what the game played of a turn: a list of {tag, attrs?, text}. It replaces
# what was received and anything set_played_text() reported.
func report_played(agent_id: String, turn_id: String, tags: Array) -> void:
	var turn: Turn = _find_turn(agent_id, turn_id)
	if turn != null:
		turn.report = tags.duplicate(true)


# Keeps the turn's agent_turn_result back after the turn ends, until send_result().
# Call it before the turn ends, e.g. from a turn_started handler.
func hold_result(agent_id: String, turn_id: String) -> void:
	var turn: Turn = _find_turn(agent_id, turn_id)
	if turn != null:
		turn.held = true


# Confirms a turn now: its played tags with status "completed", or "interrupted" when
# `interrupted` is true, the turn did not complete, or it is still streaming (the game cut it).
# Tools run only for a completed turn. Returns false for an unknown or confirmed turn.
func send_result(agent_id: String, turn_id: String, interrupted := false) -> bool:
	var turn: Turn = _find_turn(agent_id, turn_id)
	if turn == null or turn.confirmed:
		return false
	var completed := turn.status == "completed" and not interrupted
	_confirm(turn, "completed" if completed else "interrupted")
	return true


func _process(_delta: float) -> void:
	var now := OS.get_ticks_msec()
	if _ws != null:
		_poll_socket()
	if not _wanted:
		return
	if _ws == null:
		if now >= _next_try_ms:
			_open_socket(now)
	elif not _open:
		if now >= _connect_deadline_ms:
			_lost(-1)
	elif _pong_deadline_ms > 0:
		if now >= _pong_deadline_ms:
			_lost(-1)
	elif now >= _next_ping_ms:
		_send_ping(now)


# --- transport (the only part that differs between the Godot 3 and 4 addons) ---


func _open_socket(now: int) -> void:
	_ws = WebSocketClient.new()
	_ws.set_buffers(1024, 4096, 1024, 4096)
	_ws.connect("server_close_request", self, "_on_server_close_request")
	_close_code = -1
	_connect_deadline_ms = now + int(connect_timeout_s * 1000)
	if _ws.connect_to_url(_full_url()) != OK:
		_lost(-1)


func _poll_socket() -> void:
	var ws := _ws  # keeps the socket alive while handlers run, even if they drop it
	ws.poll()
	var status := ws.get_connection_status()
	if status == NetworkedMultiplayerPeer.CONNECTION_CONNECTED:
		if not _open:
			ws.get_peer(1).set_write_mode(WebSocketPeer.WRITE_MODE_TEXT)
			_on_open()
		var peer := ws.get_peer(1)
		while _ws == ws and peer.get_available_packet_count() > 0:
			var packet := peer.get_packet()
			if peer.was_string_packet():
				_on_text(packet.get_string_from_utf8())
	elif status == NetworkedMultiplayerPeer.CONNECTION_DISCONNECTED and _ws == ws:
		_lost(_close_code)


func _on_server_close_request(code: int, _reason: String) -> void:
	_close_code = code


func _close_socket() -> void:
	if _ws != null:
		_ws.disconnect_from_host(1000)
		_ws = null
	_open = false


func _send_text(text: String) -> void:
	_ws.get_peer(1).put_packet(text.to_utf8())


func _parse_json(text: String):
	var parsed := JSON.parse(text)
	return parsed.result if parsed.error == OK else null


func _full_url() -> String:
	var query := []
	if token != "":
		query.append("token=" + token.percent_encode())
	if session != "":
		query.append("session=" + session.percent_encode())
	if query.empty():
		return url
	return url + ("&" if "?" in url else "?") + PoolStringArray(query).join("&")


# --- connection life ---


func _on_open() -> void:
	var now := OS.get_ticks_msec()
	_open = true
	_attempt = 0
	_pong_deadline_ms = 0
	_next_ping_ms = now + int(ping_interval_s * 1000)
	var queued := _outbox
	_outbox = []
	var stale := 0
	for entry in queued:
		if entry["to"] == _target():
			_send(entry["frame"])
		else:
			stale += 1
	if stale > 0:
		push_warning("npc_turns: %d frames queued earlier were not sent to another session" % stale)
	emit_signal("connected")


func _lost(code: int) -> void:
	var was_open := _open
	if was_open:
		_confirm_ended_turns()
		if _ws == null:  # a tool the results ran closed the socket already
			return
	_close_socket()
	if code == TAKEN_OVER_CODE:  # another connection took the session over: do not fight it
		_wanted = false
	if _wanted:
		var delay := min(reconnect_max_s, reconnect_min_s * pow(2.0, _attempt))
		_next_try_ms = OS.get_ticks_msec() + int(delay * _rng.randf_range(0.8, 1.2) * 1000)
		_attempt += 1
	if was_open:
		_interrupt_streaming_turns()
		emit_signal("disconnected", code, _wanted)


# A turn whose end the game is hearing of (a handler of its end signal closed the socket) is
# confirmed on this socket, as it would have been right after the handlers.
func _confirm_ended_turns() -> void:
	for turn in _turns.values():
		if turn.status != "" and not turn.confirmed and not turn.held:
			_confirm(turn, turn.status)


# The server ends every streaming turn of a lost connection: so does the client, at once.
func _interrupt_streaming_turns() -> void:
	for turn in _turns.values():
		if turn.status != "":
			continue
		turn.status = "interrupted"
		turn.cut_by_link = true
		if turn.open_index >= 0:  # every open tag closes before its turn ends
			var tag: String = turn.tags[turn.open_index]["tag"]
			emit_signal("tag_closed", turn.agent_id, turn.turn_id, turn.open_index, tag)
		emit_signal("turn_interrupted", turn.agent_id, turn.turn_id, "disconnected", "")
		_end_turn(turn)


func _send_ping(now: int) -> void:
	_ping_count += 1
	_ping_sent_ms = now
	_pong_deadline_ms = now + int(pong_timeout_s * 1000)
	_next_ping_ms = now + int(ping_interval_s * 1000)
	_send({"type": "ping", "id": "npc_turns-%d" % _ping_count})


func _send(frame: Dictionary) -> void:
	if _open:
		_send_text(to_json(frame))
	elif frame["type"] != "ping":
		if _outbox.size() >= MAX_OUTBOX:
			push_warning("npc_turns: not connected, dropping the oldest queued frame")
			_outbox.pop_front()
		_outbox.append({"to": _target(), "frame": frame})


# Where queued frames belong: they are never sent to another server or session.
func _target() -> String:
	return url + " " + session


# --- server frames ---


func _on_text(text: String) -> void:
	var msg = _parse_json(text)
	if typeof(msg) != TYPE_DICTIONARY:
		push_warning("npc_turns: ignoring a frame that is not a JSON object")
		return
	var kind := _str(msg, "type")
	if kind == "pong":
		_pong_deadline_ms = 0
		latency_ms = OS.get_ticks_msec() - _ping_sent_ms
	elif kind == "get_agent_state":
		_answer_state(_str(msg, "agent_id"), _str(msg, "request_id"))
	elif kind == "error":
		var ref = msg.get("ref", {})
		ref = ref if ref is Dictionary else {}
		var unsettled = _unsettled.get(_str(ref, "turn_id"))
		if _str(msg, "code") == "turn_not_ended" and unsettled != null:
			unsettled["refused"] = true  # sent again when the server ends that turn
		else:
			emit_signal("server_error", _str(msg, "code"), _str(msg, "message"), ref)
	elif kind.begins_with("agent_"):
		_on_turn_frame(kind, msg)
	elif kind.begins_with("memor"):
		_on_memory_frame(kind, msg)


func _on_memory_frame(kind: String, msg: Dictionary) -> void:
	var agent_id := _str(msg, "agent_id")
	match kind:
		"memory_added":
			emit_signal("memory_added", agent_id, _str(msg, "memory_id"), _str(msg, "scope"))
		"memory_forgotten":
			var ids = msg.get("memory_ids", [])
			emit_signal("memories_forgotten", agent_id, ids if ids is Array else [], int(msg.get("count", 0)))
		"memory_list_result":
			var memories = msg.get("memories", [])
			var scopes = msg.get("scopes", [])
			emit_signal("memories_listed", agent_id, memories if memories is Array else [],
					scopes if scopes is Array else [])


func _on_turn_frame(kind: String, msg: Dictionary) -> void:
	var agent_id := _str(msg, "agent_id")
	var turn_id := _str(msg, "turn_id")
	var turn: Turn = _turns.get(turn_id)
	if turn == null:
		if turn_id in _ended:
			if kind == "agent_turn_finished" or kind == "agent_turn_interrupted":
				_settle_cut_turn(turn_id)
			return  # a late frame of a turn already over
		turn = Turn.new()
		turn.agent_id = agent_id
		turn.turn_id = turn_id
		_turns[turn_id] = turn
	if turn.status != "":
		return
	var index := int(msg.get("index", 0))
	var tag := _str(msg, "tag")
	match kind:
		"agent_turn_started":
			emit_signal("turn_started", agent_id, turn_id, _str(msg, "event_id"))
		"agent_tag_open":
			var attrs = msg.get("attrs", {})
			attrs = attrs if attrs is Dictionary else {}
			while turn.tags.size() <= index:
				turn.tags.append(null)
			turn.tags[index] = {"tag": tag, "attrs": attrs, "text": ""}
			turn.open_index = index
			emit_signal("tag_opened", agent_id, turn_id, index, tag, attrs)
		"agent_tag_chunk":
			var text := _str(msg, "text")
			if index < turn.tags.size() and turn.tags[index] != null:
				turn.tags[index]["text"] += text
			emit_signal("tag_chunk", agent_id, turn_id, index, tag, text)
		"agent_tag_close":
			turn.open_index = -1
			emit_signal("tag_closed", agent_id, turn_id, index, tag)
		"agent_turn_finished":
			var reason := _str(msg, "reason")
			var usage = msg.get("usage", {})
			turn.status = "completed" if reason in ["completed", "fallback"] else "interrupted"
			emit_signal("turn_finished", agent_id, turn_id, reason, usage if usage is Dictionary else {})
			_end_turn(turn)
		"agent_turn_interrupted":
			turn.status = "interrupted"
			emit_signal("turn_interrupted", agent_id, turn_id, _str(msg, "reason"), _str(msg, "by_event_id"))
			_end_turn(turn)


func _answer_state(agent_id: String, request_id: String) -> void:
	var provider: FuncRef = _agents.get(agent_id)
	if provider == null or not provider.is_valid():
		push_warning("npc_turns: no state provider registered for agent '%s'" % agent_id)
		return
	var state = provider.call_func(agent_id)
	if not state is Dictionary:
		push_warning("npc_turns: the state provider of '%s' did not return a Dictionary" % agent_id)
		return
	_send({"type": "agent_state_snapshot", "request_id": request_id, "agent_id": agent_id, "state": state})


# --- turn results and tools ---


# After the end signal's handlers: the result goes out unless the game holds it or sent it.
func _end_turn(turn: Turn) -> void:
	if turn.confirmed:
		_forget(turn)
	elif not turn.held:
		_confirm(turn, turn.status)


func _confirm(turn: Turn, status: String) -> void:
	turn.confirmed = true
	var frame := {"type": "agent_turn_result", "agent_id": turn.agent_id, "turn_id": turn.turn_id,
			"status": status, "tags": _played_tags(turn, status)}
	if turn.cut_by_link:
		_unsettled[turn.turn_id] = {"frame": frame, "refused": false}
		if _unsettled.size() > MAX_ENDED:
			_unsettled.erase(_unsettled.keys()[0])
	_send(frame)
	if status == "completed":
		_run_tools(turn)
	if turn.status != "":
		_forget(turn)


func _played_tags(turn: Turn, status: String) -> Array:
	if turn.report != null:
		return turn.report
	var played := []
	for index in turn.tags.size():
		var tag = turn.tags[index]
		if tag == null or (turn.cut_index >= 0 and index > turn.cut_index and tag["tag"] != "tool"):
			continue
		if tag["tag"] == "tool":
			if status == "completed":  # calls of a cut turn are never run, so never played
				played.append(tag.duplicate(true))
		elif index == turn.cut_index:
			played.append({"tag": tag["tag"], "attrs": tag["attrs"], "text": turn.cut_text})
		else:
			played.append(tag.duplicate(true))
	return played


func _run_tools(turn: Turn) -> void:
	var results := []
	for tag in turn.tags:
		if tag != null and tag["tag"] == "tool":
			results.append(_call_tool(turn.agent_id, tag))
	if not results.empty():
		_send({"type": "tool_results", "agent_id": turn.agent_id, "turn_id": turn.turn_id,
				"results": results, "continue": continue_after_tools})


func _call_tool(agent_id: String, tag: Dictionary) -> Dictionary:
	var tool_name := str(tag["attrs"].get("name", ""))
	var result := {"tool": tool_name, "call_id": str(tag["attrs"].get("call_id", "")), "ok": false}
	var handler: FuncRef = _tools.get(tool_name)
	if handler == null or not handler.is_valid():
		result["output"] = "unknown tool '%s'" % tool_name
		return result
	var args = {}
	if tag["text"].strip_edges() != "":
		args = _parse_json(tag["text"])
		if args == null:
			result["output"] = "the arguments are not valid JSON: %s" % tag["text"]
			return result
	var output = handler.call_func(agent_id, args)
	if output is Dictionary and output.has(FAILURE_KEY):
		result["output"] = output[FAILURE_KEY]
	else:
		result["ok"] = true
		result["output"] = output
	return result


func _find_turn(agent_id: String, turn_id: String) -> Turn:
	var turn: Turn = _turns.get(turn_id)
	if turn == null or turn.agent_id != agent_id:
		push_warning("npc_turns: no open turn '%s' of agent '%s'" % [turn_id, agent_id])
		return null
	return turn


# A turn cut by a lost link that the server went on running (a reconnect took the session
# over): a result it refused as too early is sent again now that the server ended the turn.
func _settle_cut_turn(turn_id: String) -> void:
	var unsettled = _unsettled.get(turn_id)
	_unsettled.erase(turn_id)
	if unsettled != null and unsettled["refused"]:
		_send(unsettled["frame"])


func _forget(turn: Turn) -> void:
	if not _turns.has(turn.turn_id):
		return
	_turns.erase(turn.turn_id)
	_ended.append(turn.turn_id)
	if _ended.size() > MAX_ENDED:
		_ended.pop_front()


static func _str(msg: Dictionary, key: String) -> String:
	var value = msg.get(key, "")
	return value if value is String else ""
