"""Load testing of the NPC turn server: simulated Godot clients, a scripted LLM, one report.

Run it with ``python run.py loadtest`` (or ``python -m loadtest``); ``loadtest.cli`` documents the
options, the load model and the report.
"""
