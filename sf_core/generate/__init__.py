"""The headless command `python -m sf_core.generate`: which files a run uses (`files`), loading them with
one-line errors (`bundle`), options → plan → stream → mp4 (`cli`)."""
