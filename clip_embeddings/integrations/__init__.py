"""Integrations with frameworks built on top of vector stores (LangChain)."""
