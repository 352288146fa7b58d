"""Dynamic fabric config: placement overrides stored at `config/placement`, watched."""

from __future__ import annotations

import pytest

from mesh.state.fabric_view import PLACEMENT_CONFIG, FabricView, placement_with
from mesh.domain.placement import PlacementConfig

pytestmark = pytest.mark.usefixtures("no_leaked_tasks")

DEFAULTS = PlacementConfig()


def test_overrides_replace_only_the_fields_they_name():
    changed = placement_with(DEFAULTS, {"scale_up_rate_per_copy": 600, "max_copies_per_model": 3})
    assert changed.scale_up_rate_per_copy == 600 and changed.max_copies_per_model == 3
    assert changed.min_free_fraction == DEFAULTS.min_free_fraction
    assert placement_with(DEFAULTS, {"max_copies_per_model": None}).max_copies_per_model is None


@pytest.mark.parametrize("document, fragment", [
    ([1, 2], "JSON object"),
    ({"scale_up_rate": 5}, "unknown setting(s) scale_up_rate"),
    ({"scale_up_rate_per_copy": "fast"}, "must be a number"),
    ({"scale_up_rate_per_copy": True}, "must be a number"),
    ({"scale_up_rate_per_copy": -1}, "must be > 0"),
    ({"min_free_fraction": 2}, "[0, 1)"),
])
def test_bad_overrides_say_what_is_wrong(document, fragment):
    with pytest.raises(ValueError, match=None) as raised:
        placement_with(DEFAULTS, document)
    assert fragment in str(raised.value)


async def test_the_view_applies_a_stored_change_without_a_restart(etcd, keys, caplog):
    async with FabricView(etcd, keys) as view:
        await view.wait_ready(10)
        assert view.placement(DEFAULTS) is DEFAULTS
        await etcd.put(keys.config_item(PLACEMENT_CONFIG), {"scale_up_rate_per_copy": 120})
        changed = await view.wait_for(lambda: view.placement(DEFAULTS).scale_up_rate_per_copy == 120
                                      and view.placement(DEFAULTS), 10)
        assert changed.scale_down_fraction == DEFAULTS.scale_down_fraction
        # An invalid document is logged and ignored: the defaults hold.
        await etcd.put(keys.config_item(PLACEMENT_CONFIG), {"scale_up_rate_per_copy": 0})
        await view.wait_for(lambda: view.placement(DEFAULTS) is DEFAULTS, 10)
        assert "must be > 0" in caplog.text
        await etcd.put(keys.config_item(PLACEMENT_CONFIG), {"max_adds_per_plan": 4})
        await view.wait_for(lambda: view.placement(DEFAULTS).max_adds_per_plan == 4, 10)
        await etcd.delete(keys.config_item(PLACEMENT_CONFIG))
        await view.wait_for(lambda: view.placement(DEFAULTS) is DEFAULTS, 10)
