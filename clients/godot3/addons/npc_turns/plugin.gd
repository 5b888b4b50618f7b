# Editor plugin: enabling it adds the autoload `NpcTurns`, disabling it removes it.
tool
extends EditorPlugin

const AUTOLOAD_NAME := "NpcTurns"


func enable_plugin() -> void:
	var script_path: String = get_script().resource_path.get_base_dir().plus_file("npc_turns.gd")
	add_autoload_singleton(AUTOLOAD_NAME, script_path)


func disable_plugin() -> void:
	remove_autoload_singleton(AUTOLOAD_NAME)
