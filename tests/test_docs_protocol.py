"""docs/design.md's message table names every message of mpnet/comm/protocol.py, once,
with its number, and every message has a field rule in mpnet/comm/fields.py."""

import pathlib
import re

from mpnet.comm.fields import FIELDS
from mpnet.comm.protocol import Msg

DESIGN = pathlib.Path(__file__).resolve().parents[1] / "docs" / "design.md"


def test_every_message_is_in_the_design_table_in_order():
    rows = re.findall(r"^\| (\d+) \| (\w+) \|", DESIGN.read_text(), re.M)
    documented = [(int(n), name) for n, name in rows]
    assert documented == sorted((int(m), m.name) for m in Msg)


def test_every_message_but_reply_has_field_rules():
    assert {int(m) for m in Msg} - {int(m) for m in FIELDS} <= {int(Msg.REPLY)}
