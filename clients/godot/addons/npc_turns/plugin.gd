@tool
extends EditorPlugin
## Enabling the plugin adds the autoload [code]NpcTurns[/code]; disabling it removes it.

const AUTOLOAD_NAME := "NpcTurns"


func _enable_plugin() -> void:
	var script_path: String = get_script().resource_path.get_base_dir().path_join("npc_turns.gd")
	add_autoload_singleton(AUTOLOAD_NAME, script_path)


func _disable_plugin() -> void:
	remove_autoload_singleton(AUTOLOAD_NAME)
