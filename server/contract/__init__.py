"""The wire contract between the desktop client and the server: one definition, imported by both.

``naming`` holds what may be stored (filenames, content types, integer ranges), ``groups`` the rules of
a new mask group, ``messages`` the request and response bodies (msgspec structs) and ``errors`` the error
codes. The package is pure (the standard library and msgspec only): it imports nothing else of
``server`` and nothing of ``pacs_mask_desktop``, so the client core may import it without pulling in
the server (an import-linter contract holds that edge).
"""
