"""Base LLM host: load (loading), prompt templates (prompts), pooling, embedding + cache (embed, array_store),
generation; the worker's engine (engine), wire protocol (protocol) and HTTP app (worker), and the client the API
reaches it with (client).

The model code (loading, embed, generate) and the engine never import the web framework or the database layer;
only worker.py brings in fastapi. `service.gpo` must not import this package.
Submodules are imported explicitly (e.g. `from service.embedder.embed import Embedder`) so that
importing the package stays cheap.
"""
