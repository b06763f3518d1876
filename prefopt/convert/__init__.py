"""Importers that turn other checkpoint formats into HF-layout folders."""
