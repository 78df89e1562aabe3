"""[delivery] settings: the routes table (a dict-valued table), validation errors naming file and key."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from postroom import config as c


def test_defaults_and_sample_agree() -> None:
    d = c.load(None).delivery
    sample = tomllib.loads(c.SAMPLE)["delivery"]
    for key, value in sample.items():
        got = getattr(d, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_routes_table() -> None:
    d = c.load(None, {"delivery": {"routes": {"b.test": "127.0.0.1:2626", "c.test": "relay.test"}}}).delivery
    assert d.routes == {"b.test": "127.0.0.1:2626", "c.test": "relay.test"}


@pytest.mark.parametrize("delivery, message", [
    ({"routes": {"b.test": 5}}, 'delivery.routes."b.test" must be a string'),
    ({"routes": "b.test"}, "[delivery.routes] must be a table"),
    ({"routes": {"b.test": "h:99999"}}, 'delivery.routes."b.test": port 99999'),
    ({"routes": {"a b": "h"}}, "is not a domain name"),
    ({"smarthost": "nohost"}, "delivery.smarthost"),
    ({"smarthost_user": "u"}, "go together"),
    ({"dns_servers": ["resolver.test"]}, "delivery.dns_servers[0]"),
    ({"retry_seconds": []}, "delivery.retry_seconds"),
    ({"concurrency": 0}, "delivery.concurrency must be at least 1"),
    ({"delay_notice_seconds": -1}, "delivery.delay_notice_seconds"),
])
def test_errors_name_the_key(delivery: dict[str, Any], message: str) -> None:
    with pytest.raises(c.ConfigError) as e:
        c.load(None, {"delivery": delivery})
    assert message in str(e.value) and str(e.value).startswith("<defaults>:")
