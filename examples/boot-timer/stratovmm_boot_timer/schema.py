"""The ``"boot_timer"`` key of the JSON config file, and the QMP schemas of the plugin.

``addr`` is a guest physical address; the command line gives it as text
(``addr=0xd1000000``), the JSON file as text or as a number.  The schema checks
its spelling; ``plugin.vmm_check_config`` checks where it points.
"""

from __future__ import annotations

from typing import Any

ADDRESS_SCHEMA: dict[str, Any] = {
    "type": ["integer", "string"],
    "minimum": 0,
    # "$(?!\n)": the end of the text; jsonschema uses re.search, where "$" alone also
    # matches before a final newline
    "pattern": "^(0[xX][0-9a-fA-F]+|[0-9]+)$(?!\\n)",
    "x-message": "is not an address (decimal, or hex with 0x)",
    "description": "guest physical address of the 4 KiB register window",
}

BOOT_TIMER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"addr": ADDRESS_SCHEMA},
}

_BOOT_TIME = {
    "elapsed_us": {"type": "integer", "description": "microseconds from the VMM process start"
                                                     " to the guest's signal"},
    "cpu_us": {"type": "integer", "description": "CPU time the VMM process had used by then"},
}

BOOT_TIMER_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["elapsed_us", "cpu_us"],
    "properties": _BOOT_TIME,
}

QUERY_BOOT_TIME_RETURNS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["booted", "signals"],
    "properties": {
        "booted": {"type": "boolean", "description": "the guest has signalled"},
        "signals": {"type": "integer", "description": "magic writes seen (the first counts)"},
        **_BOOT_TIME,
    },
}
