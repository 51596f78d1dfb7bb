"""`python -m eagle_demo eval`: Eagle2's published evaluation presets and VLMEvalKit's scorers, on local
benchmark files, through the native engine or an OpenAI-compatible server (docs/eval.md)."""
