# gdlint: disable=max-public-methods
extends Node
## Engine test of the Godot 4 addon against a real NPC turn server and the scripted LLM.
##
## Run by tests/test_godot4_engine.py in Godot 4.6's web export template, which scripts the LLM's
## replies for each scenario and reads what this prints:
##   RESULT ok <check>            a check passed
##   RESULT fail <check> <why>    a check failed
##   INFO <key> <json>            a value for the Python side to compare with the LLM's requests
##   STEP <name>                  the Python side should act now (reconnect scenario)
##   DONE                         the scenario ran to its end
## Settings come from the page's query (the web has no environment): scenario, url, and for
## the reconnect scenario session and token. Kept in step with clients/godot3/test_project.

const WATCHDOG_S := 90.0  # the scenario stops by itself if it hangs
const GUARD := {"name": "Bram", "description": "A tired gate guard", "location": "North Gate"}
const SMITH := {
	"name": "Smith",
	"tools":
	[
		{"name": "open_door", "description": "Open a door", "parameters": {"type": "object"}},
		{"name": "lock_door", "description": "Lock a door"},
	],
}

var client: Node
var settings := {}
var events: Array[Dictionary] = []  # every signal of the client, in order: {"signal": name, ...}
var problems: Array[String] = []
var state_requests := {}  # agent_id -> how often its state provider was called
var tool_calls := []
var hold_turns_of := ""  # the agent whose turns the game holds back (played scenario)
var report_on_say_close := false  # report_played() when a say tag closes (played scenario)
var disconnect_on_finish := false  # disconnect_from_server() from turn_finished
var disconnect_on_interrupt := false  # disconnect_from_server() from turn_interrupted
var send_on_finish := false  # send_result() from turn_finished


func _ready() -> void:
	get_tree().create_timer(WATCHDOG_S).timeout.connect(_on_watchdog)
	settings = query_settings()
	client = get_node_or_null("/root/NpcTurns")
	var scenario: String = settings.get("scenario", "")
	if client == null or not has_method("scenario_" + scenario):
		print("RESULT fail setup no NpcTurns autoload or no scenario '%s'" % scenario)
		return
	for signal_name in [
		"connected",
		"disconnected",
		"turn_started",
		"tag_opened",
		"tag_chunk",
		"tag_closed",
		"turn_finished",
		"turn_interrupted",
		"server_error",
		"memory_added",
		"memories_forgotten",
		"memories_listed",
	]:
		client.connect(signal_name, Callable(self, "_on_" + signal_name))
	await call("scenario_" + scenario)
	print("DONE")


# --- scenarios ---


func scenario_full_turn() -> void:
	await open_session("g4-full-turn")
	client.register_agent("g4_bram", state_of)
	var start := events.size()
	var event_id: String = client.interact("g4_bram", speech("Who goes there?"))
	var finished: Variant = await wait_for("turn_finished", {"agent_id": "g4_bram"}, start)
	if expect(finished != null, "no turn_finished"):
		var turn_id: String = finished["turn_id"]
		var started: Variant = find("turn_started", {"turn_id": turn_id}, start)
		expect(
			started != null and started["event_id"] == event_id, "turn_started without our event_id"
		)
		expect(finished["reason"] == "completed", "reason %s" % finished["reason"])
		expect(finished["usage"] is Dictionary, "usage is not a Dictionary")
		var asked: int = state_requests.get("g4_bram", 0)
		expect(asked == 1, "state provider called %s times" % asked)
		var tags := played(turn_id, start)
		var expected := [
			{"tag": "thought", "attrs": {}, "text": "A stranger."},
			{"tag": "say", "attrs": {}, "text": "Halt! State your business & name."},
			{"tag": "action", "attrs": {"name": "raise_spear"}, "text": ""},
		]
		expect(same(tags, expected), "tags %s" % JSON.stringify(tags))
		expect(tag_order_ok(turn_id, start), "tag signals out of order")
	report("full_turn")
	start = events.size()
	client.interact("g4_bram", speech("When does the gate close?"))
	finished = await wait_for("turn_finished", {"agent_id": "g4_bram"}, start)
	expect(finished != null and finished["reason"] == "completed", "second turn did not complete")
	expect(state_requests.get("g4_bram", 0) == 2, "state provider not called for the second turn")
	report("second_turn")
	start = events.size()
	client.notify([], {"kind": "weather", "text": "rain"})  # an empty list: the server refuses it
	var error: Variant = await wait_for("server_error", {}, start)
	expect(error != null and error["code"] == "bad_field", "no bad_field error")
	expect(
		error != null and error["ref"].get("type") == "notification_event",
		"error %s" % JSON.stringify(error)
	)
	report("server_error")


func scenario_played() -> void:
	await open_session("g4-played")
	client.register_agent("g4_mira", state_of)
	# The game shows the first turn slowly: it holds the result, then cuts it after some words.
	hold_turns_of = "g4_mira"
	var start := events.size()
	client.interact("g4_mira", speech("What do you sell?"))
	var started: Variant = await wait_for("turn_started", {"agent_id": "g4_mira"}, start)
	var finished: Variant = await wait_for("turn_finished", {"agent_id": "g4_mira"}, start)
	expect(finished != null and finished["reason"] == "completed", "first turn did not complete")
	var skipped_sent: bool = client.send_result("g4_mira", "no-such-turn")
	client.set_played_text("g4_mira", started["turn_id"], 1, "I sell potions")
	expect(
		client.send_result("g4_mira", started["turn_id"], true), "send_result refused the held turn"
	)
	expect(not client.send_result("g4_mira", started["turn_id"]), "a turn was confirmed twice")
	expect(not skipped_sent, "send_result accepted an unknown turn")
	report("held_and_cut")
	# The second turn: the game reports exactly what it showed, while the turn streams.
	hold_turns_of = ""
	report_on_say_close = true
	start = events.size()
	client.interact("g4_mira", speech("And the price?"))
	finished = await wait_for("turn_finished", {"agent_id": "g4_mira"}, start)
	expect(finished != null and finished["reason"] == "completed", "second turn did not complete")
	report_on_say_close = false
	report("reported")
	start = events.size()
	client.interact("g4_mira", speech("Thanks."))
	finished = await wait_for("turn_finished", {"agent_id": "g4_mira"}, start)
	expect(finished != null, "third turn did not end")
	report("third_turn")


func scenario_interrupt() -> void:
	await open_session("g4-interrupt")
	client.register_agent("g4_kai", state_of)
	var start := events.size()
	var first_event: String = client.interact("g4_kai", speech("Tell me a long story"))
	var chunk: Variant = await wait_for("tag_chunk", {"agent_id": "g4_kai"}, start)
	var second_event: String = client.interact("g4_kai", speech("Stop!"))
	var cut: Variant = await wait_for("turn_interrupted", {"agent_id": "g4_kai"}, start)
	if expect(cut != null and chunk != null, "no interruption"):
		expect(cut["turn_id"] == chunk["turn_id"], "another turn was interrupted")
		expect(cut["reason"] == "new_event", "reason %s" % cut["reason"])
		expect(
			cut["by_event_id"] == second_event,
			"by_event_id %s, not %s" % [cut["by_event_id"], second_event]
		)
		expect(
			find("turn_started", {"event_id": first_event}, start) != null,
			"first turn had no turn_started"
		)
		var tags := played(cut["turn_id"], start)
		expect(
			tags.size() == 1 and tags[0]["text"].begins_with("word"),
			"played %s" % JSON.stringify(tags)
		)
		if not tags.is_empty():
			print("INFO played_so_far ", JSON.stringify(tags[0]["text"]))
	var next_start: Variant = find("turn_started", {"event_id": second_event}, start)
	var finished: Variant = await wait_for("turn_finished", {"agent_id": "g4_kai"}, start)
	var second_ok: bool = (
		next_start != null and finished != null and finished["turn_id"] == next_start["turn_id"]
	)
	if expect(second_ok, "no second turn"):
		var tags := played(finished["turn_id"], start)
		expect(
			same(tags, [{"tag": "say", "attrs": {}, "text": "Yes?"}]),
			"second turn %s" % JSON.stringify(tags)
		)
	report("interrupt")


func scenario_tools() -> void:
	await open_session("g4-tools")
	client.register_agent("g4_smith", state_of)
	client.register_tool("open_door", open_door)
	client.register_tool("lock_door", lock_door)
	var start := events.size()
	client.interact("g4_smith", speech("Open the forge, please"))
	var finished: Variant = await wait_for("turn_finished", {"agent_id": "g4_smith"}, start)
	if expect(finished != null and finished["reason"] == "completed", "tool turn did not complete"):
		var tool_tag: Variant = find(
			"tag_opened", {"turn_id": finished["turn_id"], "tag": "tool"}, start
		)
		expect(
			tool_tag != null and tool_tag["attrs"].get("name") == "open_door", "no open_door tag"
		)
		expect(tool_tag != null and tool_tag["attrs"].get("call_id", "") != "", "no call_id")
	var expected := [["g4_smith", "open_door", {"door": "forge"}], ["g4_smith", "lock_door", {}]]
	expect(same(tool_calls, expected), "tool calls %s" % JSON.stringify(tool_calls))
	report("tool_called")
	var fields := {"agent_id": "g4_smith", "event_id": ""}
	var continuation: Variant = await wait_for("turn_started", fields, start)
	finished = null
	if continuation != null:
		finished = await wait_for("turn_finished", {"turn_id": continuation["turn_id"]}, start)
	if expect(continuation != null and finished != null, "no continuation turn"):
		var tags := played(continuation["turn_id"], start)
		var text := [{"tag": "say", "attrs": {}, "text": "The forge is open."}]
		expect(same(tags, text), "continuation text %s" % JSON.stringify(tags))
	report("continuation")


func scenario_reconnect() -> void:
	client.reconnect_min_s = 0.2
	client.reconnect_max_s = 0.8
	client.ping_interval_s = 0.3
	client.pong_timeout_s = 1.5
	client.register_agent("g4_ren", state_of)
	client.connect_to_server(
		settings["url"], settings.get("token", ""), settings.get("session", "")
	)
	print("STEP started")  # nothing listens yet: the client must keep retrying
	var up: Variant = await wait_for("connected", {}, 0, 30.0)
	expect(up != null, "never connected")
	report("first_connect")
	var deadline := Time.get_ticks_msec() + 10000
	while client.latency_ms < 0 and Time.get_ticks_msec() < deadline:
		await get_tree().process_frame
	expect(client.latency_ms >= 0, "no pong to the keepalive pings")
	await turn_works("g4_ren", "Hello")
	report("first_connection_turn")
	# A turn streams when the link dies: the client ends it at once, and confirms what it got.
	var start := events.size()
	client.interact("g4_ren", speech("Tell me a long story"))
	var chunk: Variant = await wait_for("tag_chunk", {"agent_id": "g4_ren"}, start)
	print("STEP freeze")  # the proxy stops forwarding: the pings go unanswered
	var cut: Variant = await wait_for("turn_interrupted", {"agent_id": "g4_ren"}, start, 10.0)
	var down: Variant = find("disconnected", {}, start)
	expect(down != null and down["reconnecting"], "the dead connection was not noticed")
	if expect(chunk != null and cut != null, "the streaming turn did not end"):
		expect(
			cut["reason"] == "disconnected" and cut["turn_id"] == chunk["turn_id"],
			"cut %s" % JSON.stringify(cut)
		)
		expect(
			find("tag_closed", {"turn_id": cut["turn_id"]}, start) != null,
			"the open tag was not closed"
		)
		print("INFO played_so_far ", JSON.stringify(played(cut["turn_id"], start)[0]["text"]))
	up = await wait_for("connected", {}, start, 10.0)
	expect(up != null, "did not reconnect")
	report("keepalive_reconnect")
	await turn_works("g4_ren", "Still there?")
	report("second_connection_turn")
	start = events.size()
	print("STEP take_over")  # another client opens the same session
	down = await wait_for("disconnected", {}, start, 10.0)
	expect(
		down != null and down["code"] == 4000 and not down["reconnecting"],
		"take-over: %s" % JSON.stringify(down)
	)
	await get_tree().create_timer(1.5).timeout
	expect(find("connected", {}, start) == null, "reconnected after a take-over")
	expect(not client.is_connected_to_server(), "still connected")
	report("take_over")


## The game disconnects from its turn_finished handler: the turn completed, and stays so.
func scenario_disconnect_on_finish() -> void:
	await open_session("g4-quit")
	client.register_agent("g4_quinn", state_of)
	disconnect_on_finish = true
	var start := events.size()
	client.interact("g4_quinn", speech("Goodbye"))
	var finished: Variant = await wait_for("turn_finished", {"agent_id": "g4_quinn"}, start)
	var down: Variant = await wait_for("disconnected", {}, start)
	disconnect_on_finish = false
	if expect(finished != null and down != null, "no turn_finished and disconnected"):
		var cut: Variant = find("turn_interrupted", {"turn_id": finished["turn_id"]}, start)
		expect(cut == null, "the finished turn was also interrupted: %s" % JSON.stringify(cut))
		expect(not down["reconnecting"], "reconnecting after disconnect_from_server()")
		print("INFO turn_id ", JSON.stringify(finished["turn_id"]))
	report("disconnect_on_finish")


## The game disconnects from its turn_interrupted handler (cut by a new event): one interruption.
func scenario_disconnect_on_interrupt() -> void:
	await open_session("g4-cut-quit")
	client.register_agent("g4_cora", state_of)
	var start := events.size()
	client.interact("g4_cora", speech("Tell me a long story"))
	var chunk: Variant = await wait_for("tag_chunk", {"agent_id": "g4_cora"}, start)
	disconnect_on_interrupt = true
	client.interact("g4_cora", speech("Stop!"))
	var down: Variant = await wait_for("disconnected", {}, start)
	disconnect_on_interrupt = false
	if expect(chunk != null and down != null, "no chunk and disconnected"):
		var cuts := []
		for event in events.slice(start):
			if event["signal"] == "turn_interrupted":
				cuts.append(event)
		var once: bool = cuts.size() == 1 and cuts[0]["reason"] == "new_event"
		expect(once, "interruptions %s" % JSON.stringify(cuts))
		var tags := played(chunk["turn_id"], start)
		if expect(tags.size() == 1, "played %s" % JSON.stringify(tags)):
			print("INFO played_so_far ", JSON.stringify(tags[0]["text"]))
	report("disconnect_on_interrupt")


## The game holds a turn and confirms it from its turn_finished handler: completed, as played.
func scenario_send_on_finish() -> void:
	await open_session("g4-send")
	client.register_agent("g4_sela", state_of)
	hold_turns_of = "g4_sela"
	send_on_finish = true
	var start := events.size()
	client.interact("g4_sela", speech("Good morning"))
	var finished: Variant = await wait_for("turn_finished", {"agent_id": "g4_sela"}, start)
	send_on_finish = false
	hold_turns_of = ""
	expect(finished != null and finished["reason"] == "completed", "the turn did not complete")
	client.disconnect_from_server()  # the server writes the conversation log
	report("send_on_finish")


## Frames queued for one session are dropped when the game connects to another one.
func scenario_switch_session() -> void:
	await open_session("g4-first")
	client.register_agent("g4_old", state_of)
	client.register_agent("g4_new", state_of)
	var start := events.size()
	client.interact("g4_old", speech("Tell me a long story"))
	await wait_for("tag_chunk", {"agent_id": "g4_old"}, start)
	client.disconnect_from_server()  # the streaming turn's result is queued
	client.interact("g4_old", speech("Are you still there?"))  # queued too
	start = events.size()
	client.connect_to_server(settings["url"], "", "g4-second")
	var up: Variant = await wait_for("connected", {}, start)
	expect(up != null, "never connected to the second session")
	await turn_works("g4_new", "Hello")
	var error: Variant = find("server_error", {}, start)
	expect(error == null, "the second session got %s" % JSON.stringify(error))
	expect(find("turn_started", {"agent_id": "g4_old"}, start) == null, "the old agent's event ran")
	report("switch_session")


## The game tells the guard a group memory (every guard knows it: it is in the next guard's
## prompt), lists it, forgets it, and is told why a memory too large is refused.
func scenario_memories() -> void:
	await open_session("g4-memories")
	client.register_agent("g4_vera", state_of)
	var start := events.size()
	client.add_memory("g4_bram", "Tonight's password is swordfish.", true, "group:town guard")
	var added: Variant = await wait_for("memory_added", {"agent_id": "g4_bram"}, start)
	expect(
		added != null and added["scope"] == "group:town guard",
		"memory_added %s" % JSON.stringify(added)
	)
	await turn_works("g4_vera", "Halt, who goes there?")
	client.list_memories("g4_vera", "password")
	var listed: Variant = await wait_for("memories_listed", {"agent_id": "g4_vera"}, start)
	if expect(
		listed != null and listed["memories"].size() == 1,
		"memories_listed %s" % JSON.stringify(listed)
	):
		expect(listed["memories"][0]["text"] == "Tonight's password is swordfish.", "listed text")
		var scopes: Array = listed["scopes"]
		expect(same(scopes, ["agent", "group:town guard"]), "scopes %s" % JSON.stringify(scopes))
	if added != null:
		client.forget_memory("g4_bram", added["memory_id"], "group:town guard")
	var forgotten: Variant = await wait_for("memories_forgotten", {"agent_id": "g4_bram"}, start)
	expect(
		forgotten != null and forgotten["count"] == 1, "forgotten %s" % JSON.stringify(forgotten)
	)
	client.forget_memories("g4_vera", "swordfish")
	forgotten = await wait_for("memories_forgotten", {"agent_id": "g4_vera"}, start)
	expect(forgotten != null and forgotten["count"] == 0, "again %s" % JSON.stringify(forgotten))
	client.add_memory("g4_vera", "x".repeat(2001))
	var error: Variant = await wait_for("server_error", {}, start)
	expect(
		error != null and error["code"] == "memory_too_large", "error %s" % JSON.stringify(error)
	)
	report("memories")


# --- the game side: state providers and tools ---


func state_of(agent_id: String) -> Dictionary:
	state_requests[agent_id] = state_requests.get(agent_id, 0) + 1
	if agent_id == "g4_smith":
		return SMITH
	if agent_id == "g4_bram":
		return GUARD
	if agent_id == "g4_vera":
		return {"name": "Vera", "groups": ["town guard"]}
	return {"name": agent_id.substr(3).capitalize()}


func open_door(agent_id: String, args: Variant) -> Variant:
	tool_calls.append([agent_id, "open_door", args])
	return "door opened"


func lock_door(agent_id: String, args: Variant) -> Variant:
	tool_calls.append([agent_id, "lock_door", args])
	return NpcTurnsClient.tool_failed("no key for that door")


# --- helpers ---


## The page's query string as a Dictionary (e.g. ?scenario=full_turn&url=ws%3A...).
func query_settings() -> Dictionary:
	var found := {}
	var search: String = str(JavaScriptBridge.eval("location.search", true)).trim_prefix("?")
	for pair in search.split("&", false):
		var parts := pair.split("=", true, 1)
		found[parts[0].uri_decode()] = parts[1].uri_decode() if parts.size() > 1 else ""
	return found


func speech(text: String) -> Dictionary:
	return {"kind": "speech", "source": "player", "text": text}


func open_session(session: String) -> Variant:
	var start := events.size()
	client.connect_to_server(settings["url"], "", session)
	var up: Variant = await wait_for("connected", {}, start)
	expect(up != null, "never connected")
	return up


func turn_works(agent_id: String, text: String) -> void:
	var start := events.size()
	client.interact(agent_id, speech(text))
	var finished: Variant = await wait_for("turn_finished", {"agent_id": agent_id}, start)
	expect(
		finished != null and finished["reason"] == "completed",
		"turn after '%s' did not complete" % text
	)


## Waits (at least one frame) for a signal whose fields match, seen at index [param from] or later.
func wait_for(signal_name: String, fields: Dictionary, from := 0, timeout_s := 15.0) -> Variant:
	var deadline := Time.get_ticks_msec() + int(timeout_s * 1000)
	await get_tree().process_frame
	while true:
		var found: Variant = find(signal_name, fields, from)
		if found != null or Time.get_ticks_msec() > deadline:
			return found
		await get_tree().process_frame
	return null


func find(signal_name: String, fields: Dictionary, from := 0) -> Variant:
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


## The tags of a turn rebuilt from the signals: what the game would have shown.
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


## Every tag opens with the next index, gets chunks only while open, and closes before the next.
func tag_order_ok(turn_id: String, from := 0) -> bool:
	var open_index := -1
	var next_index := 0
	for index in range(from, events.size()):
		var event: Dictionary = events[index]
		if event.get("turn_id") != turn_id or not event.has("index"):
			continue
		match event["signal"]:
			"tag_opened":
				if open_index != -1 or event["index"] != next_index:
					return false
				open_index = next_index
				next_index += 1
			"tag_chunk", "tag_closed":
				if event["index"] != open_index:
					return false
				if event["signal"] == "tag_closed":
					open_index = -1
	return open_index == -1 and next_index > 0


## Deep equality that ignores int/float (JSON numbers) and key order.
func same(a: Variant, b: Variant) -> bool:
	return JSON.stringify(a, "", true) == JSON.stringify(b, "", true)


func expect(condition: bool, what: String) -> bool:
	if not condition:
		problems.append(what)
	return condition


func report(check: String) -> void:
	if problems.is_empty():
		print("RESULT ok ", check)
	else:
		print("RESULT fail ", check, " ", "; ".join(problems).replace("\n", " "))
	problems.clear()


func _on_watchdog() -> void:
	print("RESULT fail watchdog the scenario did not finish within %d s" % WATCHDOG_S)


# --- the client's signals, recorded ---


func _on_connected() -> void:
	events.append({"signal": "connected"})


func _on_disconnected(code: int, reconnecting: bool) -> void:
	events.append({"signal": "disconnected", "code": code, "reconnecting": reconnecting})


func _on_turn_started(agent_id: String, turn_id: String, event_id: String) -> void:
	events.append(
		{"signal": "turn_started", "agent_id": agent_id, "turn_id": turn_id, "event_id": event_id}
	)
	if agent_id == hold_turns_of:
		client.hold_result(agent_id, turn_id)


func _on_tag_opened(
	agent_id: String, turn_id: String, index: int, tag: String, attrs: Dictionary
) -> void:
	var event := {"signal": "tag_opened", "agent_id": agent_id, "turn_id": turn_id, "index": index}
	event.merge({"tag": tag, "attrs": attrs})
	events.append(event)


func _on_tag_chunk(
	agent_id: String, turn_id: String, index: int, tag: String, text: String
) -> void:
	var event := {"signal": "tag_chunk", "agent_id": agent_id, "turn_id": turn_id, "index": index}
	event.merge({"tag": tag, "text": text})
	events.append(event)


func _on_tag_closed(agent_id: String, turn_id: String, index: int, tag: String) -> void:
	var event := {"signal": "tag_closed", "agent_id": agent_id, "turn_id": turn_id, "index": index}
	event["tag"] = tag
	events.append(event)
	if report_on_say_close and tag == "say":
		client.report_played(agent_id, turn_id, [{"tag": "say", "text": "Two coins."}])


func _on_turn_finished(
	agent_id: String, turn_id: String, reason: String, usage: Dictionary
) -> void:
	var event := {
		"signal": "turn_finished", "agent_id": agent_id, "turn_id": turn_id, "reason": reason
	}
	event["usage"] = usage
	events.append(event)
	if send_on_finish:
		expect(client.send_result(agent_id, turn_id), "send_result refused the finished turn")
	if disconnect_on_finish:
		client.disconnect_from_server()


func _on_turn_interrupted(
	agent_id: String, turn_id: String, reason: String, by_event_id: String
) -> void:
	var event := {
		"signal": "turn_interrupted", "agent_id": agent_id, "turn_id": turn_id, "reason": reason
	}
	event["by_event_id"] = by_event_id
	events.append(event)
	if disconnect_on_interrupt:
		client.disconnect_from_server()


func _on_server_error(code: String, message: String, ref: Dictionary) -> void:
	events.append({"signal": "server_error", "code": code, "message": message, "ref": ref})


func _on_memory_added(agent_id: String, memory_id: String, scope: String) -> void:
	var event := {"signal": "memory_added", "agent_id": agent_id, "memory_id": memory_id}
	event["scope"] = scope
	events.append(event)


func _on_memories_forgotten(agent_id: String, memory_ids: Array, count: int) -> void:
	var event := {"signal": "memories_forgotten", "agent_id": agent_id, "memory_ids": memory_ids}
	event["count"] = count
	events.append(event)


func _on_memories_listed(agent_id: String, memories: Array, scopes: Array) -> void:
	var event := {"signal": "memories_listed", "agent_id": agent_id, "memories": memories}
	event["scopes"] = scopes
	events.append(event)
