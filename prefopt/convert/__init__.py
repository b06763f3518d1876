"""Converters between HF-layout folders and other checkpoint formats: GGUF import (``gguf``) and export (``gguf_export``)."""
