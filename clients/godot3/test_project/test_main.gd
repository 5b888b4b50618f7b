# Engine test of the Godot 3 addon against a real NPC turn server and the scripted LLM.
#
# Run by tests/test_godot_clients.py, which scripts the LLM's replies for each scenario and
# reads what this prints:
#   RESULT ok <check>            a check passed
#   RESULT fail <check> <why>    a check failed
#   INFO <key> <json>            a value for the Python side to compare with the LLM's requests
#   STEP <name>                  the Python side should act now (reconnect scenario)
#   DONE                         the scenario ran to its end
# Environment: NPC_TURNS_URL (the server's /ws address), NPC_TURNS_SCENARIO, and for the
# reconnect scenario NPC_TURNS_SESSION and NPC_TURNS_TOKEN.
extends Node

const WATCHDOG_S := 90.0  # the engine quits by itself if a scenario hangs
const GUARD := {"name": "Bram", "description": "A tired gate guard", "location": "North Gate"}
const SMITH := {"name": "Smith", "tools": [
	{"name": "open_door", "description": "Open a door", "parameters": {"type": "object"}},
	{"name": "lock_door", "description": "Lock a door"}]}

var client: Node
var events := []  # every signal of the client, in order: {"signal": name, ...its arguments}
var problems := []
var state_requests := {}  # agent_id -> how often its state provider was called
var tool_calls := []
var hold_turns_of := ""  # the agent whose turns the game holds back (played scenario)
var report_on_say_close := false  # report_played() when a say tag closes (played scenario)
var disconnect_on_finish := false  # disconnect_from_server() from turn_finished
var disconnect_on_interrupt := false  # disconnect_from_server() from turn_interrupted
var send_on_finish := false  # send_result() from turn_finished


func _ready() -> void:
	get_tree().create_timer(WATCHDOG_S).connect("timeout", self, "_on_watchdog")
	client = get_node_or_null("/root/NpcTurns")
	var scenario := OS.get_environment("NPC_TURNS_SCENARIO")
	if client == null or not has_method("scenario_" + scenario):
		print("RESULT fail setup no NpcTurns autoload or no scenario '%s'" % scenario)
		get_tree().quit(2)
		return
	for signal_name in ["connected", "disconnected", "turn_started", "tag_opened", "tag_chunk",
			"tag_closed", "turn_finished", "turn_interrupted", "server_error", "memory_added",
			"memories_forgotten", "memories_listed"]:
		client.connect(signal_name, self, "_on_" + signal_name)
	yield(call("scenario_" + scenario), "completed")
	print("DONE")
	get_tree().quit(0)


# --- scenarios ---


func scenario_full_turn():
	yield(open_session("g3-full-turn"), "completed")
	client.register_agent("g3_bram", funcref(self, "state_of"))
	var start := events.size()
	var event_id: String = client.interact("g3_bram", {"kind": "speech", "source": "player", "text": "Who goes there?"})
	var finished = yield(wait_for("turn_finished", {"agent_id": "g3_bram"}, start), "completed")
	if expect(finished != null, "no turn_finished"):
		var turn_id: String = finished["turn_id"]
		var started = find("turn_started", {"turn_id": turn_id}, start)
		expect(started != null and started["event_id"] == event_id, "turn_started without our event_id")
		expect(finished["reason"] == "completed", "reason %s" % finished["reason"])
		expect(finished["usage"] is Dictionary, "usage is not a Dictionary")
		expect(state_requests.get("g3_bram", 0) == 1, "state provider called %s times" % state_requests.get("g3_bram", 0))
		var tags := played(turn_id, start)
		expect(same(tags, [
			{"tag": "thought", "attrs": {}, "text": "A stranger."},
			{"tag": "say", "attrs": {}, "text": "Halt! State your business & name."},
			{"tag": "action", "attrs": {"name": "raise_spear"}, "text": ""}]), "tags %s" % to_json(tags))
		expect(tag_order_ok(turn_id, start), "tag signals out of order")
	report("full_turn")
	start = events.size()
	client.interact("g3_bram", {"kind": "speech", "source": "player", "text": "When does the gate close?"})
	finished = yield(wait_for("turn_finished", {"agent_id": "g3_bram"}, start), "completed")
	expect(finished != null and finished["reason"] == "completed", "second turn did not complete")
	expect(state_requests.get("g3_bram", 0) == 2, "state provider not called for the second turn")
	report("second_turn")
	start = events.size()
	client.notify([], {"kind": "weather", "text": "rain"})  # an empty list: the server refuses it
	var error = yield(wait_for("server_error", {}, start), "completed")
	expect(error != null and error["code"] == "bad_field", "no bad_field error")
	expect(error != null and error["ref"].get("type") == "notification_event", "error ref %s" % to_json(error))
	report("server_error")


func scenario_played():
	yield(open_session("g3-played"), "completed")
	client.register_agent("g3_mira", funcref(self, "state_of"))
	# The game shows the first turn slowly: it holds the result, then cuts it after some words.
	hold_turns_of = "g3_mira"
	var start := events.size()
	client.interact("g3_mira", {"kind": "speech", "source": "player", "text": "What do you sell?"})
	var started = yield(wait_for("turn_started", {"agent_id": "g3_mira"}, start), "completed")
	var finished = yield(wait_for("turn_finished", {"agent_id": "g3_mira"}, start), "completed")
	expect(finished != null and finished["reason"] == "completed", "first turn did not complete")
	var skipped_sent: bool = client.send_result("g3_mira", "no-such-turn")
	client.set_played_text("g3_mira", started["turn_id"], 1, "I sell potions")
	expect(client.send_result("g3_mira", started["turn_id"], true), "send_result refused the held turn")
	expect(not client.send_result("g3_mira", started["turn_id"]), "a turn was confirmed twice")
	expect(not skipped_sent, "send_result accepted an unknown turn")
	report("held_and_cut")
	# The second turn: the game reports exactly what it showed, while the turn streams.
	hold_turns_of = ""
	report_on_say_close = true
	start = events.size()
	client.interact("g3_mira", {"kind": "speech", "source": "player", "text": "And the price?"})
	finished = yield(wait_for("turn_finished", {"agent_id": "g3_mira"}, start), "completed")
	expect(finished != null and finished["reason"] == "completed", "second turn did not complete")
	report_on_say_close = false
	report("reported")
	start = events.size()
	client.interact("g3_mira", {"kind": "speech", "source": "player", "text": "Thanks."})
	finished = yield(wait_for("turn_finished", {"agent_id": "g3_mira"}, start), "completed")
	expect(finished != null, "third turn did not end")
	report("third_turn")


func scenario_interrupt():
	yield(open_session("g3-interrupt"), "completed")
	client.register_agent("g3_kai", funcref(self, "state_of"))
	var start := events.size()
	var first_event: String = client.interact("g3_kai", {"kind": "speech", "source": "player", "text": "Tell me a long story"})
	var chunk = yield(wait_for("tag_chunk", {"agent_id": "g3_kai"}, start), "completed")
	yield(get_tree().create_timer(0.3), "timeout")
	var second_event: String = client.interact("g3_kai", {"kind": "speech", "source": "player", "text": "Stop!"})
	var cut = yield(wait_for("turn_interrupted", {"agent_id": "g3_kai"}, start), "completed")
	if expect(cut != null and chunk != null, "no interruption"):
		expect(cut["turn_id"] == chunk["turn_id"], "another turn was interrupted")
		expect(cut["reason"] == "new_event", "reason %s" % cut["reason"])
		expect(cut["by_event_id"] == second_event, "by_event_id %s, not %s" % [cut["by_event_id"], second_event])
		expect(find("turn_started", {"event_id": first_event}, start) != null, "first turn had no turn_started")
		var tags := played(cut["turn_id"], start)
		expect(tags.size() == 1 and tags[0]["text"].begins_with("word word"), "played %s" % to_json(tags))
		if not tags.empty():
			print("INFO played_so_far ", to_json(tags[0]["text"]))
	var next_start = find("turn_started", {"event_id": second_event}, start)
	var finished = yield(wait_for("turn_finished", {"agent_id": "g3_kai"}, start), "completed")
	expect(next_start != null and finished != null and finished["turn_id"] == next_start["turn_id"], "no second turn")
	if finished != null:
		expect(same(played(finished["turn_id"], start), [{"tag": "say", "attrs": {}, "text": "Yes?"}]), "second turn text")
	report("interrupt")


func scenario_tools():
	yield(open_session("g3-tools"), "completed")
	client.register_agent("g3_smith", funcref(self, "state_of"))
	client.register_tool("open_door", funcref(self, "open_door"))
	client.register_tool("lock_door", funcref(self, "lock_door"))
	var start := events.size()
	client.interact("g3_smith", {"kind": "speech", "source": "player", "text": "Open the forge, please"})
	var finished = yield(wait_for("turn_finished", {"agent_id": "g3_smith"}, start), "completed")
	if expect(finished != null and finished["reason"] == "completed", "tool turn did not complete"):
		var tool_tag = find("tag_opened", {"turn_id": finished["turn_id"], "tag": "tool"}, start)
		expect(tool_tag != null and tool_tag["attrs"].get("name") == "open_door", "no open_door tag")
		expect(tool_tag != null and tool_tag["attrs"].get("call_id", "") != "", "no call_id")
	expect(same(tool_calls, [["g3_smith", "open_door", {"door": "forge"}], ["g3_smith", "lock_door", {}]]),
			"tool calls %s" % to_json(tool_calls))
	report("tool_called")
	var continuation = yield(wait_for("turn_started", {"agent_id": "g3_smith", "event_id": ""}, start), "completed")
	finished = null
	if continuation != null:
		finished = yield(wait_for("turn_finished", {"turn_id": continuation["turn_id"]}, start), "completed")
	if expect(continuation != null and finished != null, "no continuation turn"):
		expect(same(played(continuation["turn_id"], start), [{"tag": "say", "attrs": {}, "text": "The forge is open."}]),
				"continuation text %s" % to_json(played(continuation["turn_id"], start)))
	report("continuation")


func scenario_reconnect():
	client.reconnect_min_s = 0.2
	client.reconnect_max_s = 0.8
	client.ping_interval_s = 0.3
	client.pong_timeout_s = 1.5
	client.register_agent("g3_ren", funcref(self, "state_of"))
	client.connect_to_server(OS.get_environment("NPC_TURNS_URL"), OS.get_environment("NPC_TURNS_TOKEN"),
			OS.get_environment("NPC_TURNS_SESSION"))
	print("STEP started")  # nothing listens yet: the client must keep retrying
	var up = yield(wait_for("connected", {}, 0, 20.0), "completed")
	expect(up != null, "never connected")
	report("first_connect")
	yield(get_tree().create_timer(1.0), "timeout")
	expect(client.latency_ms >= 0, "no pong to the keepalive pings")
	yield(turn_works("Hello"), "completed")
	report("first_connection_turn")
	# A turn streams when the link dies: the client ends it at once, and confirms what it got.
	var start := events.size()
	client.interact("g3_ren", {"kind": "speech", "source": "player", "text": "Tell me a long story"})
	var chunk = yield(wait_for("tag_chunk", {"agent_id": "g3_ren"}, start), "completed")
	print("STEP freeze")  # the proxy stops forwarding: the pings go unanswered
	var cut = yield(wait_for("turn_interrupted", {"agent_id": "g3_ren"}, start, 10.0), "completed")
	var down = find("disconnected", {}, start)
	expect(down != null and down["reconnecting"], "the dead connection was not noticed")
	if expect(chunk != null and cut != null, "the streaming turn did not end"):
		expect(cut["reason"] == "disconnected" and cut["turn_id"] == chunk["turn_id"], "cut %s" % to_json(cut))
		expect(find("tag_closed", {"turn_id": cut["turn_id"]}, start) != null, "the open tag was not closed")
		print("INFO played_so_far ", to_json(played(cut["turn_id"], start)[0]["text"]))
	up = yield(wait_for("connected", {}, start, 10.0), "completed")
	expect(up != null, "did not reconnect")
	report("keepalive_reconnect")
	yield(turn_works("Still there?"), "completed")
	report("second_connection_turn")
	start = events.size()
	print("STEP take_over")  # another client opens the same session
	down = yield(wait_for("disconnected", {}, start, 10.0), "completed")
	expect(down != null and down["code"] == 4000 and not down["reconnecting"], "take-over: %s" % to_json(down))
	yield(get_tree().create_timer(1.5), "timeout")
	expect(find("connected", {}, start) == null, "reconnected after a take-over")
	expect(not client.is_connected_to_server(), "still connected")
	report("take_over")


# The game disconnects from its turn_finished handler: the turn completed, and stays so.
func scenario_disconnect_on_finish():
	yield(open_session("g3-quit"), "completed")
	client.register_agent("g3_quinn", funcref(self, "state_of"))
	disconnect_on_finish = true
	var start := events.size()
	client.interact("g3_quinn", {"kind": "speech", "source": "player", "text": "Goodbye"})
	var finished = yield(wait_for("turn_finished", {"agent_id": "g3_quinn"}, start), "completed")
	var down = yield(wait_for("disconnected", {}, start), "completed")
	disconnect_on_finish = false
	if expect(finished != null and down != null, "no turn_finished and disconnected"):
		var cut = find("turn_interrupted", {"turn_id": finished["turn_id"]}, start)
		expect(cut == null, "the finished turn was also interrupted: %s" % to_json(cut))
		expect(not down["reconnecting"], "reconnecting after disconnect_from_server()")
		print("INFO turn_id ", to_json(finished["turn_id"]))
	report("disconnect_on_finish")


# The game disconnects from its turn_interrupted handler (cut by a new event): one interruption.
func scenario_disconnect_on_interrupt():
	yield(open_session("g3-cut-quit"), "completed")
	client.register_agent("g3_cora", funcref(self, "state_of"))
	var start := events.size()
	client.interact("g3_cora", {"kind": "speech", "source": "player", "text": "Tell me a long story"})
	var chunk = yield(wait_for("tag_chunk", {"agent_id": "g3_cora"}, start), "completed")
	disconnect_on_interrupt = true
	client.interact("g3_cora", {"kind": "speech", "source": "player", "text": "Stop!"})
	var down = yield(wait_for("disconnected", {}, start), "completed")
	disconnect_on_interrupt = false
	if expect(chunk != null and down != null, "no chunk and disconnected"):
		var cuts := []
		for index in range(start, events.size()):
			if events[index]["signal"] == "turn_interrupted":
				cuts.append(events[index])
		expect(cuts.size() == 1 and cuts[0]["reason"] == "new_event", "interruptions %s" % to_json(cuts))
		var tags := played(chunk["turn_id"], start)
		if expect(tags.size() == 1, "played %s" % to_json(tags)):
			print("INFO played_so_far ", to_json(tags[0]["text"]))
	report("disconnect_on_interrupt")


# The game holds a turn and confirms it from its turn_finished handler: completed, as played.
func scenario_send_on_finish():
	yield(open_session("g3-send"), "completed")
	client.register_agent("g3_sela", funcref(self, "state_of"))
	hold_turns_of = "g3_sela"
	send_on_finish = true
	var start := events.size()
	client.interact("g3_sela", {"kind": "speech", "source": "player", "text": "Good morning"})
	var finished = yield(wait_for("turn_finished", {"agent_id": "g3_sela"}, start), "completed")
	send_on_finish = false
	hold_turns_of = ""
	expect(finished != null and finished["reason"] == "completed", "the turn did not complete")
	client.disconnect_from_server()  # the server writes the conversation log
	report("send_on_finish")


# Frames queued for one session are dropped when the game connects to another one.
func scenario_switch_session():
	yield(open_session("g3-first"), "completed")
	client.register_agent("g3_old", funcref(self, "state_of"))
	client.register_agent("g3_new", funcref(self, "state_of"))
	var start := events.size()
	client.interact("g3_old", {"kind": "speech", "source": "player", "text": "Tell me a long story"})
	yield(wait_for("tag_chunk", {"agent_id": "g3_old"}, start), "completed")
	client.disconnect_from_server()  # the streaming turn's result is queued
	client.interact("g3_old", {"kind": "speech", "source": "player", "text": "Are you still there?"})
	start = events.size()
	client.connect_to_server(OS.get_environment("NPC_TURNS_URL"), "", "g3-second")
	var up = yield(wait_for("connected", {}, start), "completed")
	expect(up != null, "never connected to the second session")
	var turn_start := events.size()
	client.interact("g3_new", {"kind": "speech", "source": "player", "text": "Hello"})
	var finished = yield(wait_for("turn_finished", {"agent_id": "g3_new"}, turn_start), "completed")
	expect(finished != null and finished["reason"] == "completed", "the second session's turn did not complete")
	var error = find("server_error", {}, start)
	expect(error == null, "the second session got %s" % to_json(error))
	expect(find("turn_started", {"agent_id": "g3_old"}, start) == null, "the old agent's event ran")
	report("switch_session")


# The game tells the guard a group memory (every guard knows it: it is in the next guard's
# prompt), lists it, forgets it, and is told why a memory too large is refused.
func scenario_memories():
	yield(open_session("g3-memories"), "completed")
	client.register_agent("g3_vera", funcref(self, "state_of"))
	var start := events.size()
	client.add_memory("g3_bram", "Tonight's password is swordfish.", true, "group:town guard")
	var added = yield(wait_for("memory_added", {"agent_id": "g3_bram"}, start), "completed")
	expect(added != null and added["scope"] == "group:town guard", "memory_added %s" % to_json(added))
	client.interact("g3_vera", {"kind": "speech", "source": "player", "text": "Halt, who goes there?"})
	var finished = yield(wait_for("turn_finished", {"agent_id": "g3_vera"}, start), "completed")
	expect(finished != null and finished["reason"] == "completed", "the guard's turn did not complete")
	client.list_memories("g3_vera", "password")
	var listed = yield(wait_for("memories_listed", {"agent_id": "g3_vera"}, start), "completed")
	if expect(listed != null and listed["memories"].size() == 1, "memories_listed %s" % to_json(listed)):
		expect(listed["memories"][0]["text"] == "Tonight's password is swordfish.", "listed text")
		expect(same(listed["scopes"], ["agent", "group:town guard"]), "scopes %s" % to_json(listed["scopes"]))
	if added != null:
		client.forget_memory("g3_bram", added["memory_id"], "group:town guard")
	var forgotten = yield(wait_for("memories_forgotten", {"agent_id": "g3_bram"}, start), "completed")
	expect(forgotten != null and forgotten["count"] == 1, "memories_forgotten %s" % to_json(forgotten))
	client.forget_memories("g3_vera", "swordfish")
	forgotten = yield(wait_for("memories_forgotten", {"agent_id": "g3_vera"}, start), "completed")
	expect(forgotten != null and forgotten["count"] == 0, "forgotten again %s" % to_json(forgotten))
	var long_text := ""
	for _i in range(2001):
		long_text += "x"
	client.add_memory("g3_vera", long_text)
	var error = yield(wait_for("server_error", {}, start), "completed")
	expect(error != null and error["code"] == "memory_too_large", "error %s" % to_json(error))
	report("memories")


# --- the game side: state providers and tools ---


func state_of(agent_id: String) -> Dictionary:
	state_requests[agent_id] = state_requests.get(agent_id, 0) + 1
	if agent_id == "g3_smith":
		return SMITH
	if agent_id == "g3_bram":
		return GUARD
	if agent_id == "g3_vera":
		return {"name": "Vera", "groups": ["town guard"]}
	return {"name": agent_id.substr(3).capitalize()}


func open_door(agent_id: String, args):
	tool_calls.append([agent_id, "open_door", args])
	return "door opened"


func lock_door(agent_id: String, args):
	tool_calls.append([agent_id, "lock_door", args])
	return client.tool_failed("no key for that door")


# --- helpers ---


func open_session(session: String):
	client.connect_to_server(OS.get_environment("NPC_TURNS_URL"), "", session)
	var up = yield(wait_for("connected", {}, 0), "completed")
	expect(up != null, "never connected")
	return up


func turn_works(text: String):
	var start := events.size()
	client.interact("g3_ren", {"kind": "speech", "source": "player", "text": text})
	var finished = yield(wait_for("turn_finished", {"agent_id": "g3_ren"}, start), "completed")
	expect(finished != null and finished["reason"] == "completed", "turn after '%s' did not complete" % text)


# Waits (always at least one frame) for a signal whose fields match, seen at index `from` or later.
func wait_for(signal_name: String, fields: Dictionary, from := 0, timeout_s := 15.0):
	var deadline := OS.get_ticks_msec() + int(timeout_s * 1000)
	yield(get_tree(), "idle_frame")
	while true:
		var found = find(signal_name, fields, from)
		if found != null or OS.get_ticks_msec() > deadline:
			return found
		yield(get_tree(), "idle_frame")


func find(signal_name: String, fields: Dictionary, from := 0):
	for index in range(from, events.size()):
		var event: Dictionary = events[index]
		if event["signal"] != signal_name:
			continue
		var matches := true
		for key in fields:
			matches = matches and same(event.get(key), fields[key])
		if matches:
			return event
	return null


# The tags of a turn rebuilt from the signals: what the game would have shown.
func played(turn_id: String, from := 0) -> Array:
	var tags := []
	for index in range(from, events.size()):
		var event: Dictionary = events[index]
		if event.get("turn_id") != turn_id:
			continue
		if event["signal"] == "tag_opened":
			tags.append({"tag": event["tag"], "attrs": event["attrs"], "text": ""})
		elif event["signal"] == "tag_chunk":
			tags[event["index"]]["text"] += event["text"]
	return tags


# Every tag opens with the next index, gets chunks only while open, and closes before the next.
func tag_order_ok(turn_id: String, from := 0) -> bool:
	var open_index := -1
	var next_index := 0
	for index in range(from, events.size()):
		var event: Dictionary = events[index]
		if event.get("turn_id") != turn_id or not event.has("index"):
			continue
		if typeof(event["index"]) != TYPE_INT:
			return false
		match event["signal"]:
			"tag_opened":
				if open_index != -1 or event["index"] != next_index:
					return false
				open_index = next_index
				next_index += 1
			"tag_chunk":
				if event["index"] != open_index:
					return false
			"tag_closed":
				if event["index"] != open_index:
					return false
				open_index = -1
	return open_index == -1 and next_index > 0


# Deep equality (Godot 3 compares dictionaries by reference).
func same(a, b) -> bool:
	return JSON.print(a, "", true) == JSON.print(b, "", true)


func expect(condition: bool, what: String) -> bool:
	if not condition:
		problems.append(what)
	return condition


func report(check: String) -> void:
	if problems.empty():
		print("RESULT ok ", check)
	else:
		print("RESULT fail ", check, " ", PoolStringArray(problems).join("; ").replace("\n", " "))
	problems.clear()


func _on_watchdog() -> void:
	print("RESULT fail watchdog the scenario did not finish within %d s" % WATCHDOG_S)
	get_tree().quit(3)


# --- the client's signals, recorded ---


func _on_connected() -> void:
	events.append({"signal": "connected"})


func _on_disconnected(code: int, reconnecting: bool) -> void:
	events.append({"signal": "disconnected", "code": code, "reconnecting": reconnecting})


func _on_turn_started(agent_id: String, turn_id: String, event_id: String) -> void:
	events.append({"signal": "turn_started", "agent_id": agent_id, "turn_id": turn_id, "event_id": event_id})
	if agent_id == hold_turns_of:
		client.hold_result(agent_id, turn_id)


func _on_tag_opened(agent_id: String, turn_id: String, index: int, tag: String, attrs: Dictionary) -> void:
	events.append({"signal": "tag_opened", "agent_id": agent_id, "turn_id": turn_id, "index": index,
			"tag": tag, "attrs": attrs})


func _on_tag_chunk(agent_id: String, turn_id: String, index: int, tag: String, text: String) -> void:
	events.append({"signal": "tag_chunk", "agent_id": agent_id, "turn_id": turn_id, "index": index,
			"tag": tag, "text": text})


func _on_tag_closed(agent_id: String, turn_id: String, index: int, tag: String) -> void:
	events.append({"signal": "tag_closed", "agent_id": agent_id, "turn_id": turn_id, "index": index, "tag": tag})
	if report_on_say_close and tag == "say":
		client.report_played(agent_id, turn_id, [{"tag": "say", "text": "Two coins."}])


func _on_turn_finished(agent_id: String, turn_id: String, reason: String, usage: Dictionary) -> void:
	events.append({"signal": "turn_finished", "agent_id": agent_id, "turn_id": turn_id, "reason": reason,
			"usage": usage})
	if send_on_finish:
		expect(client.send_result(agent_id, turn_id), "send_result refused the finished turn")
	if disconnect_on_finish:
		client.disconnect_from_server()


func _on_turn_interrupted(agent_id: String, turn_id: String, reason: String, by_event_id: String) -> void:
	events.append({"signal": "turn_interrupted", "agent_id": agent_id, "turn_id": turn_id, "reason": reason,
			"by_event_id": by_event_id})
	if disconnect_on_interrupt:
		client.disconnect_from_server()


func _on_server_error(code: String, message: String, ref: Dictionary) -> void:
	events.append({"signal": "server_error", "code": code, "message": message, "ref": ref})


func _on_memory_added(agent_id: String, memory_id: String, scope: String) -> void:
	events.append({"signal": "memory_added", "agent_id": agent_id, "memory_id": memory_id, "scope": scope})


func _on_memories_forgotten(agent_id: String, memory_ids: Array, count: int) -> void:
	events.append({"signal": "memories_forgotten", "agent_id": agent_id, "memory_ids": memory_ids, "count": count})


func _on_memories_listed(agent_id: String, memories: Array, scopes: Array) -> void:
	events.append({"signal": "memories_listed", "agent_id": agent_id, "memories": memories, "scopes": scopes})
