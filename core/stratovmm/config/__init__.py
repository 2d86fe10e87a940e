"""Configuration: the StratoVirt command line, the JSON file, one assembled schema.

The JSON file's shape is the canonical form.  Each option becomes a JSON
fragment (``-drive id=a,file=b`` → ``{"drive": [{"drive_id": "a", ...}]}``); the
command line's fragment is checked alone (so errors name the option), merged
over the file (the command line wins), and the result is checked again
against the schema that the core and every plugin contributed.
"""
