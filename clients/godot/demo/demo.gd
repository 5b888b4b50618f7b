extends MarginContainer
## Two NPCs, Bram and Mira, answer the player through the NPC turn server.
##
## Type into the line at the bottom: both NPCs hear it, or "@bram ..." / "@mira ..." speaks to
## one while the other overhears it (a notification, no turn). Each panel fills as the NPC's
## tags stream in: thoughts grey, speech white, actions yellow. Mira can hand the player a
## potion with the tool [code]give_item[/code]. A web export connects to the server named by
## [code]?server=ws://host:port/ws[/code] in the page's address, if any.

const SERVER_URL := "ws://127.0.0.1:8000/ws"
const SESSION := "demo"
const TAG_COLORS := {
	"thought": Color.DARK_GRAY,
	"say": Color.WHITE,
	"action": Color.KHAKI,
	"tool": Color.MEDIUM_SEA_GREEN,
}

## The NPCs' specs, sent to the server before each of their turns (they may change in play).
var npcs := {
	"bram":
	{
		"name": "Bram",
		"description": "A tired gate guard in dented mail.",
		"persona": "Gruff but fair; speaks in short sentences.",
		"goals": ["keep the gate", "get home before dark"],
		"location": "North Gate",
		"relationships": {"Mira": "his sister"},
	},
	"mira":
	{
		"name": "Mira",
		"description": "Bram's sister, who sells potions from a cart by the gate.",
		"persona": "Cheerful and talkative; haggles over everything.",
		"location": "North Gate",
		"inventory": ["healing potion", "night-eye potion"],
		"relationships": {"Bram": "her brother"},
		"tools":
		[
			{
				"name": "give_item",
				"description": "Hand one item of your inventory to the player.",
				"parameters":
				{
					"type": "object",
					"properties": {"item": {"type": "string"}},
					"required": ["item"],
				},
			},
		],
	},
}
var player_items: Array[String] = []

@onready var _status: Label = %Status
@onready var _input: LineEdit = %Input
@onready var _views := {"bram": %Bram as RichTextLabel, "mira": %Mira as RichTextLabel}


func _ready() -> void:
	for agent_id in npcs:
		NpcTurns.register_agent(agent_id, _state_of)
	NpcTurns.register_tool("give_item", _give_item)
	NpcTurns.connected.connect(_show_status)
	NpcTurns.disconnected.connect(_on_disconnected)
	NpcTurns.turn_started.connect(_on_turn_started)
	NpcTurns.tag_opened.connect(_on_tag_opened)
	NpcTurns.tag_chunk.connect(_on_tag_chunk)
	NpcTurns.tag_closed.connect(_on_tag_closed)
	NpcTurns.turn_interrupted.connect(_on_turn_interrupted)
	NpcTurns.server_error.connect(_on_server_error)
	_input.text_submitted.connect(_on_input_submitted)
	_input.grab_focus()
	NpcTurns.connect_to_server(_server_url(), "", SESSION)
	_show_status()


func _server_url() -> String:
	if OS.has_feature("web"):
		var query := "new URLSearchParams(location.search).get('server') || ''"
		var from_page := str(JavaScriptBridge.eval(query, true))
		if from_page != "":
			return from_page
	return SERVER_URL


func _state_of(agent_id: String) -> Dictionary:
	return npcs[agent_id]


func _give_item(agent_id: String, args: Variant) -> Variant:
	var item := str(args.get("item", "")) if args is Dictionary else ""
	var inventory: Array = npcs[agent_id].get("inventory", [])
	if item not in inventory:
		return NpcTurnsClient.tool_failed("there is no %s in the inventory" % item)
	inventory.erase(item)
	player_items.append(item)
	_show_status()
	return "the player now holds the %s" % item


func _on_input_submitted(text: String) -> void:
	_input.clear()
	text = text.strip_edges()
	if text.is_empty():
		return
	var listeners: Array = npcs.keys()
	for agent_id in npcs:
		if text.begins_with("@%s " % agent_id):
			listeners = [agent_id]
			text = text.substr(agent_id.length() + 2)
	for agent_id in npcs:
		if agent_id in listeners:
			NpcTurns.interact(agent_id, {"kind": "speech", "source": "player", "text": text})
		else:
			NpcTurns.notify(agent_id, {"kind": "overheard", "source": "player", "text": text})


func _on_turn_started(agent_id: String, _turn_id: String, _event_id: String) -> void:
	_views[agent_id].append_text("\n")


func _on_tag_opened(
	agent_id: String, _turn_id: String, _index: int, tag: String, attrs: Dictionary
) -> void:
	var view: RichTextLabel = _views[agent_id]
	view.push_color(TAG_COLORS.get(tag, Color.WHITE))
	if tag == "action" or tag == "tool":
		view.add_text("*%s* " % attrs.get("name", tag))


func _on_tag_chunk(agent_id: String, _turn: String, _index: int, tag: String, text: String) -> void:
	if tag != "tool":  # a tool's text is its JSON arguments, not for the player
		_views[agent_id].add_text(text)


func _on_tag_closed(agent_id: String, _turn_id: String, _index: int, _tag: String) -> void:
	var view: RichTextLabel = _views[agent_id]
	view.pop()
	view.add_text(" ")


func _on_turn_interrupted(agent_id: String, _turn_id: String, _reason: String, _by: String) -> void:
	_views[agent_id].append_text("[color=salmon]—[/color]")


func _on_disconnected(_code: int, reconnecting: bool) -> void:
	_status.text = "Disconnected, reconnecting..." if reconnecting else "Disconnected."


func _on_server_error(code: String, message: String, _ref: Dictionary) -> void:
	_status.text = "Server error %s: %s" % [code, message]


func _show_status() -> void:
	var state := "Connected to" if NpcTurns.is_connected_to_server() else "Connecting to"
	var items := ", ".join(player_items) if not player_items.is_empty() else "nothing"
	_status.text = "%s %s. You carry %s." % [state, NpcTurns.url, items]
