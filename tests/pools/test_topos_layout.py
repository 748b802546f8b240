"""The pure parts of the ToPoS pool: headers and pages as ToPoS writes them, token bodies to fields, line
uploads, result documents, the site.toml keys, and the refusal of what ToPoS cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import load
from agent.errors import ConfigError, ExitCode
from agent.pools import topos_layout as layout
from agent.pools.topos import refuse
from agent.token import Attempt, Outcome, Report, Result, State, Token

# A 500 as ToPoS 4.1 serves it when MariaDB is away: the message, then the PHP stack trace.
STACK_TRACE_PAGE = b"""<?xml version="1.0" encoding="UTF-8"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>HTTP/1.1 500 Internal Server Error</title></head>
<body><h1>HTTP/1.1 500 Internal Server Error</h1>
</div><pre id="message">No such file or directory</pre>
<pre>#0 /srv/topos/4.1/include/global.php(117): mysqli-&gt;__construct()
#1 /srv/topos/4.1/nextToken.php(22): Topos::poolId()
#4 {main}</pre></body></html>"""


def test_ids_and_locks_come_from_the_end_of_topos_urls() -> None:
    assert layout.token_id_of("https://t.example.org/4.1/pools/P/tokens/10291067") == "10291067"
    assert layout.token_id_of("https://t.example.org/4.1/pools/P/") is None
    lock = "7ee7630e-edbf-11f1-9026-02fc00000001"
    assert layout.lock_of(f"http://h/4.1/pools/P/locks/{lock}") == lock
    assert layout.lock_of("http://h/4.1/pools/P/locks/") is None  # token.php's header for an unlocked token


def test_leases_and_names_from_token_headers() -> None:
    assert layout.leases_of({"X-Number-Of-Leases": "3"}) == 3
    assert layout.leases_of({}) == 0
    assert layout.leases_of({"X-Number-Of-Leases": "many"}) == 0
    assert layout.name_of({"Content-Disposition": 'inline; filename="genome \\"7\\".fa"'}) == 'genome "7".fa'
    assert layout.name_of({}) == ""


def test_pool_page_counts_in_any_format() -> None:
    plain = "Name\tSize\tDescription\r\ntokens/\t12 tokens\t\r\nlocks/\t3 locks\t\r\nnextToken\t\t\r\n"
    assert layout.counts_of(plain) == {"tokens": 12, "locks": 3}


def test_an_error_page_gives_its_message_line_and_never_the_stack_trace() -> None:
    assert layout.summary(STACK_TRACE_PAGE) == "No such file or directory"
    assert layout.is_topos_page(STACK_TRACE_PAGE)
    apache = b"<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
    assert layout.summary(apache) == "404 Not Found"
    assert not layout.is_topos_page(apache)
    assert layout.summary(b"") == "no details"
    assert len(layout.summary(b'<pre id="message">' + b"x" * 5000 + b"</pre>")) == 120


def test_text_tokens_are_the_input_byte_for_byte_and_json_objects_the_fields() -> None:
    raw = "$(rm -rf ~) 'q' é".encode() + b"\xff"
    fields, problem = layout.token_fields(raw, 'text/plain; charset="UTF-8"', "")
    assert problem == ""
    assert fields == {"input": raw.decode("utf-8", "surrogateescape")}
    assert fields["input"].encode("utf-8", "surrogateescape") == raw
    fields, _ = layout.token_fields(b'{"genome": "g7", "k": 31}', "application/json", "run-7")
    assert fields == {"genome": "g7", "k": 31, "name": "run-7"}
    fields, problem = layout.token_fields(b"[1, 2]", "application/json", "")
    assert fields == {"input": "[1, 2]"}
    assert "not an object" in problem
    fields, problem = layout.token_fields(b"{oops", "application/json; charset=UTF-8", "")
    assert fields == {"input": "{oops"}
    assert "not valid JSON" in problem
    assert layout.token_fields(b"data", "application/octet-stream", "file.bin")[0] == {
        "input": "data",
        "name": "file.bin",
    }


def test_json_bodies_leave_the_name_to_the_token_name() -> None:
    assert json.loads(layout.json_body({"name": "n", "k": 1, "é": "ü"})) == {"k": 1, "é": "ü"}


def test_lines_go_in_chunks_that_end_in_newlines_and_never_split_a_line() -> None:
    lines = [f"line {i}" for i in range(10)] + ["0", "é\udcff"]
    chunks = list(layout.line_chunks(lines, 20))
    assert sum(count for count, _ in chunks) == len(lines)
    joined = b"".join(body for _, body in chunks)
    assert joined.split(b"\n")[:-1] == [line.encode("utf-8", "surrogateescape") for line in lines]
    assert all(body.endswith(b"\n") for _, body in chunks)  # ToPoS drops a last line "0" without one
    assert layout.check_line("ends in CR\r") is not None
    assert layout.check_line("fine") is None


def test_attempt_records_are_found_by_name_and_fill_the_history() -> None:
    assert layout.attempt_lease(layout.attempt_name("17", 2), "17") == 2
    assert layout.attempt_lease("attempt-170-2", "17") is None
    assert layout.attempt_lease("attempt-17-x", "17") is None
    first = Attempt("p1", "node1", None, 10.0, outcome="failed", exit_code=3, reason="exit code 3")
    current = Attempt("p2", "node2", None, 20.0)
    attempts = layout.history(3, {1: {"attempt": first.to_json()}}, current)
    assert attempts[0] == first
    assert attempts[1].outcome == Outcome.LEASE_EXPIRED.value  # the second hand-out left no record
    assert attempts[1].reason == layout.NO_RECORD
    assert attempts[2] == current


def test_a_claims_description_names_the_pilot_and_the_claim_and_a_lock_page_its_token() -> None:
    description = layout.claim_description("pilot p1 on node12, batch job slurm:7", 41)
    assert description == "pilot p1 on node12, batch job slurm:7, claim 41"
    assert layout.host_of(description) == "node12"
    page = b"TokenId: 10291067\nTokenName: \nTokenURL: http://t/4.1/pools/p/tokens/10291067\nTimeout: 60\n"
    assert layout.lock_token_id(page) == "10291067"
    assert layout.lock_token_id(b"<html>TokenId: x</html>") is None


def test_only_charged_failures_count_against_max_attempts_not_hand_outs() -> None:
    def attempt(outcome: Outcome) -> Attempt:
        return Attempt("p1", "node1", None, 1.0, outcome=outcome.value)

    given_back = [attempt(o) for o in (Outcome.INTERRUPTED, Outcome.UNHEALTHY, Outcome.LEASE_LOST)]
    failed = [attempt(o) for o in (Outcome.FAILED, Outcome.TIMEOUT, Outcome.NOT_STARTED, Outcome.MEMORY)]
    assert layout.charged(given_back) == 0
    assert layout.charged(failed) == 4
    no_record = layout.history(3, {}, Attempt("p2", "node2", None, 2.0))[:-1]  # two hand-outs, no word
    assert layout.charged([*no_record, *given_back, failed[0]]) == 1


def test_a_result_document_keeps_id_content_attempts_exit_code_and_tails() -> None:
    attempt = Attempt("p1", "node1", "slurm:7", 10.0, 11.0, 12.0, 0, None, "done", "exit code 0")
    token = Token("10291067", {"input": "x"}, State.LOCKED, (attempt,))
    result = Result(Outcome.DONE, "exit code 0", 11.0, 12.0, 0, None, b"out \xff", b"err")
    document = layout.result_document(
        token,
        Report(result, State.DONE, 0),
        pool="genomes",
        body=b"x",
        content_type="text/plain",
        lock="L1",
        leases=1,
        attempts=[attempt],
    )
    assert document["type"] == layout.RESULT
    assert (document["token"], document["pool"], document["state"]) == ("10291067", "genomes", "done")
    assert document["content"] == "x"
    assert document["exit_code"] == 0
    assert document["attempts"] == [attempt.to_json()]
    assert document["stdout_tail"] == "out \ufffd"
    assert document["lock"] == "L1"
    json.dumps(document)  # storable as it is
    binary = layout.content_of(b"\xff\x00")
    assert binary["content"] is None
    assert layout.body_of(binary) == b"\xff\x00"
    assert layout.body_of(layout.content_of("é".encode())) == "é".encode()


def write(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(f'[server]\n{server}\n[task]\ncommand = ["/bin/true"]\n')
    return path


def test_topos_config_keys_defaults_and_checks(tmp_path: Path) -> None:
    path = write(tmp_path, 'backend = "topos"\nurl = "https://topos.example.org/4.1"\npool = "genomes"')
    topos = load(path, {}).server.topos
    assert topos is not None
    assert topos.url == "https://topos.example.org/4.1/"
    assert (topos.pool, topos.done_pool, topos.error_pool) == ("genomes", "genomes.done", "genomes.error")
    assert topos.tls_verify is True
    assert topos.username is None
    for server, problem in (
        ('backend = "topos"\nurl = "https://t/4.1/"\npool = "a b"', "server.pool: a ToPoS pool name"),
        ('backend = "topos"\nurl = "https://t/4.1/"', "server.pool: missing"),
        ('backend = "topos"\nurl = "ftp://t/"\npool = "p"', "server.url: expected an http"),
        ('backend = "topos"\nurl = "https://a:pw@t/4.1/"\npool = "p"', "not in the URL"),
        (
            'backend = "topos"\nurl = "https://t/4.1/"\npool = "p"\ndatabase = "x"',
            "server.database: unknown key",
        ),
    ):
        with pytest.raises(ConfigError, match=problem):
            load(write(tmp_path, server), {})


def test_what_topos_cannot_do_is_refused_in_one_line() -> None:
    err = refuse("hold a token until the tokens it depends on are done (`after`)")
    assert err.exit_code is ExitCode.CONFIG
    assert str(err).startswith('server.backend = "topos": ToPoS cannot hold a token until')
    assert "\n" not in str(err)


def test_status_reads_listing_times_lock_hosts_and_result_documents() -> None:
    assert layout.created_of({"Created": "2026-12-01T19:43:34Z"}) == 1796154214.0
    assert layout.created_of({"Created": None}) == 0.0
    assert layout.host_of("pilot node12-3129-9bbc on node12, batch job slurm:7") == "node12"
    assert layout.host_of("wn-17.grid.example.org") == "wn-17.grid.example.org"  # the bash client's
    assert layout.host_of("") == "?"
    attempt = Attempt("p1", "node1", None, 10.0, 11.0, 12.0, 3, None, "failed", "exit code 3")
    body = json.dumps(
        {
            "type": layout.RESULT,
            "token": "7",
            "state": "error",
            "content": "x",
            "content_type": "text/plain",
            "failures": 2,
            "attempts": [attempt.to_json()],
        }
    )
    document = layout.document_of(body.encode())
    assert document is not None
    token = layout.token_of_result(document)
    assert (token.id, token.state, token.fields, token.failures) == ("7", State.ERROR, {"input": "x"}, 2)
    assert token.attempts == (attempt,)
    assert layout.document_of(b'{"type": "other"}') is None
    assert layout.document_of(b"not json") is None


def test_tokens_with_dependencies_or_children_are_refused_before_anything_is_written() -> None:
    from agent.config import Secret, ServerConfig, ToposServer
    from agent.errors import TokenError, UsageError
    from agent.identity import Identity
    from agent.pools.base import Lease, NewToken
    from agent.pools.topos import ToposPool

    class NoServer:  # any request would be a write this test says must not happen
        def request(self, *args: object, **kwargs: object) -> None:
            raise AssertionError(f"a request was made: {args}")

        def close(self) -> None:
            pass

    topos = ToposServer("http://t/4.1/", "p", "p.done", "p.error", None, Secret(""), None, True)
    server = ServerConfig(backend="topos", lease=60.0, max_outage=60.0, timeout=5.0, topos=topos)
    pool = ToposPool(server, Identity("p1", "node1", None), http=NoServer())  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="ToPoS cannot hold token 'x' until the tokens it comes `after`"):
        pool.add([NewToken("x", {"input": "1", "after": ["y"]})])
    handle = {"lock": "L", "leases": 1, "body": "", "content_type": "text/plain"}
    token = Token("7", {"input": "x"}, State.LOCKED, (Attempt("p1", "node1", None, 1.0),))
    lease = Lease(token, "L", 100.0, token.attempts[0], handle)
    result = Result(Outcome.DONE, "exit code 0", 1.0, 2.0, 0)
    report = Report(result, State.DONE, 0, children=(NewToken("c", {"input": "1"}),))
    with pytest.raises(TokenError, match="PILOT_NEW_TOKENS"):
        pool.report(lease, report)
    with pytest.raises(UsageError, match="ToPoS cannot cancel tokens"):
        pool.cancel(["7"], all_todo=False)
