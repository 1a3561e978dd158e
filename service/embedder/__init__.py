"""Base LLM host: load (loading), prompt templates (prompts), pooling, embedding + cache (embed), generation.

Never imports the web framework or the database layer; `service.gpo` must not import this package.
Submodules are imported explicitly (e.g. `from service.embedder.embed import Embedder`) so that
importing the package stays cheap.
"""
