"""core.membership: a node that keeps being lost soon after joining is refused, not taken again."""

from core.membership import FLAP_LIMIT, Membership


def flap(members: Membership, times: int, start: float = 0.0, address: str = "10.0.0.2:1900") -> list:
    reasons = []
    for n in range(times):
        assert members.admits("b", address, start + 10 * n) or reasons[-1:] != [None]
        reasons.append(members.lost("b", address, start + 10 * n + 3))
    return reasons


def test_a_node_lost_soon_after_joining_again_and_again_is_refused_on_the_third_time():
    members = Membership(check_s=1)
    reasons = flap(members, FLAP_LIMIT)
    assert reasons[:-1] == [None] * (FLAP_LIMIT - 1)
    assert "lost 3 times" in reasons[-1] and "10.0.0.2:1900" in reasons[-1]
    assert not members.admits("b", "10.0.0.2:1900", 100)
    assert members.lost("b", "10.0.0.2:1900", 101) is None  # said once


def test_a_refused_node_is_taken_again_from_another_address():
    members = Membership(check_s=1)
    flap(members, FLAP_LIMIT)
    assert members.admits("b", "10.0.0.3:1900", 100)
    assert members.lost("b", "10.0.0.3:1900", 101) is None


def test_a_node_that_lived_long_between_losses_is_never_refused():
    members = Membership(check_s=1)
    for n in range(10):
        assert members.admits("b", "a", 100 * n)
        assert members.lost("b", "a", 100 * n + 50) is None


def test_nodes_are_counted_apart():
    members = Membership(check_s=1)
    for n in range(FLAP_LIMIT - 1):
        members.admits("b", "a", n * 10)
        members.lost("b", "a", n * 10 + 1)
        members.admits("c", "x", n * 10)
        assert members.lost("c", "x", n * 10 + 1) is None
    assert members.admits("b", "a", 100)
