import pytest

from mesaguard.protocols import Alarm, Alert, Fallback, Protocol, Stop, compose

ALARM = Alarm(env=0, step=3, detector="cusum", score=-2.0, statistics={"cusum": 7.0})


def test_each_protocol():
    assert Stop().stops and Stop().act("obs") is None
    fb = Fallback(lambda obs: f"safe({obs})")
    assert not fb.stops and fb.act("o") == "safe(o)"
    seen = []
    Alert(seen.append).on_alarm(ALARM)
    assert seen == [ALARM]


def test_composition_alerts_all_overrides_first_stops_if_any():
    seen = []
    p = Alert(seen.append) + Fallback(lambda o: 1) + Fallback(lambda o: 2) + Alert(lambda a: seen.append("second"))
    assert not p.stops and p.act(None) == 1
    p.on_alarm(ALARM)
    assert seen == [ALARM, "second"]
    assert compose([Stop(), Alert(print)]).stops
    assert compose(Stop()).__class__ is Stop


def test_bad_protocols():
    with pytest.raises(TypeError, match="callable policy"):
        Fallback(3)
    with pytest.raises(TypeError, match="callable callback"):
        Alert(None)
    with pytest.raises(TypeError, match="expected a Protocol"):
        compose("stop")
    with pytest.raises(TypeError, match="at least one"):
        compose()
    assert Protocol().act(None) is None
