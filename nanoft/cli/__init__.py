"""Plumbing for the chapter scripts: their flags, and the tables, files and plots a run ends with. The library
below never imports it."""
