"""The commands that talk to a running responder share one way to find the token."""

from responder.remote import client_token


def test_the_given_token_wins_then_responder_token_then_the_older_name(monkeypatch):
    monkeypatch.delenv("RESPONDER_TOKEN", raising=False)
    monkeypatch.delenv("RESPONDER_REPLAY_TOKEN", raising=False)
    assert client_token(None) is None
    monkeypatch.setenv("RESPONDER_REPLAY_TOKEN", "older")
    assert client_token(None) == "older"
    monkeypatch.setenv("RESPONDER_TOKEN", "current")
    assert client_token(None) == "current"
    assert client_token("given") == "given"
    monkeypatch.setenv("RESPONDER_TOKEN", "")  # set but empty counts as unset
    assert client_token(None) == "older"
