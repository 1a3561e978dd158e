from tests.ports import ephemeral_range, free_ports


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    import socket

    lo, hi = ephemeral_range()
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(not lo <= p <= hi for p in ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
