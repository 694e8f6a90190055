"""Scenarios of the official E2B Python SDKs (`e2b`, `e2b-code-interpreter`), unmodified, against agentboxd.

Run by run.sh, which starts agentboxd (local backend) and sets E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL.
Each scenario creates its own sandboxes with real processes and kills them. Prints one line per scenario and
exits non-zero when any fails.

    python scenarios.py [--bench | --bench-only] [NAME_SUBSTRING ...]
"""

import os
import statistics
import sys
import time
import traceback

import e2b
from e2b import CommandExitException, NotFoundException, Sandbox, SandboxQuery
from e2b_code_interpreter import Sandbox as CodeSandbox

SCENARIOS = []
TAG = f"run-{os.getpid()}"


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


def make(**kw):
    kw.setdefault("timeout", 120)
    meta = {"suite": TAG}
    meta.update(kw.pop("metadata", {}))
    return Sandbox.create(metadata=meta, **kw)


def expect_raises(exc, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except exc as e:
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)} did not raise {exc.__name__}")


@scenario
def create_with_metadata_and_envs():
    sb = make(metadata={"owner": "alice"}, envs={"FOO": "bar baz"})
    try:
        assert sb.sandbox_id
        assert sb.commands.run("echo -n $FOO").stdout == "bar baz"
        info = sb.get_info()
        assert info.metadata["owner"] == "alice", info.metadata
        assert info.template_id == "base"
        assert info.state.value == "running"
        assert info.end_at > info.started_at
        assert sb.is_running()
    finally:
        sb.kill()


@scenario
def commands_foreground_output_and_exit_codes():
    sb = make()
    try:
        r = sb.commands.run("echo out; echo err >&2")
        assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0), r
        e = expect_raises(CommandExitException, sb.commands.run, "echo partial; exit 3")
        assert e.exit_code == 3 and e.stdout == "partial\n", e
        r = sb.commands.run("pwd", cwd="/tmp")
        assert r.stdout.strip() == "/tmp"
        r = sb.commands.run("echo -n $A-$B", envs={"A": "1", "B": "two"})
        assert r.stdout == "1-two"
        # Large output arrives whole, in order.
        r = sb.commands.run("seq 1 20000")
        assert r.stdout.splitlines()[-1] == "20000" and len(r.stdout.splitlines()) == 20000
    finally:
        sb.kill()


@scenario
def commands_run_as_root_inside_or_as_the_user():
    sb = make()
    try:
        assert sb.commands.run("id -un").stdout == "user\n"
        assert sb.commands.run("id -un", user="user").stdout == "user\n"
        # Root of the sandbox's own user namespace: it owns the sandbox's files, and nothing outside.
        r = sb.commands.run("id -u; echo x > /home/user/r; chown root /home/user/r; stat -c %U /home/user/r", user="root")
        assert r.stdout == "0\nroot\n", r
        assert sb.commands.run("echo -n $HOME", user="root").stdout == "/root"
    finally:
        sb.kill()


@scenario
def commands_on_stdout_streams_lines():
    sb = make()
    try:
        seen_out, seen_err = [], []
        r = sb.commands.run(
            "for i in 1 2 3; do echo line$i; sleep 0.05; done; echo e >&2",
            on_stdout=seen_out.append,
            on_stderr=seen_err.append,
        )
        assert "".join(seen_out) == "line1\nline2\nline3\n", seen_out
        assert "".join(seen_err) == "e\n"
        assert r.exit_code == 0
    finally:
        sb.kill()


@scenario
def commands_background_list_connect_and_kill():
    sb = make()
    try:
        h = sb.commands.run("echo started; sleep 60", background=True)
        assert h.pid in [p.pid for p in sb.commands.list()]
        listed = [p for p in sb.commands.list() if p.pid == h.pid][0]
        assert listed.cmd == "/bin/bash" and "sleep 60" in " ".join(listed.args), listed
        again = sb.commands.connect(h.pid)
        assert sb.commands.kill(h.pid) is True
        e = expect_raises(CommandExitException, h.wait)
        assert e.exit_code == -1, e
        expect_raises(CommandExitException, again.wait)
        assert h.pid not in [p.pid for p in sb.commands.list()]
        assert sb.commands.kill(h.pid) is False, "killing a gone process reports False"
        # A background command that finishes on its own.
        h = sb.commands.run("sleep 0.2; echo done", background=True)
        assert h.wait().stdout == "done\n"
        # kill() of the handle itself.
        h = sb.commands.run("sleep 60", background=True)
        assert h.kill() is True
    finally:
        sb.kill()


@scenario
def commands_stdin_send_and_close():
    sb = make()
    try:
        h = sb.commands.run("cat; echo eof", background=True, stdin=True)
        sb.commands.send_stdin(h.pid, "hello ")
        sb.commands.send_stdin(h.pid, b"world\n")
        sb.commands.close_stdin(h.pid)
        r = h.wait()
        assert r.stdout == "hello world\neof\n", repr(r.stdout)
        # Without stdin=True, input is refused and the command sees an empty stdin.
        assert sb.commands.run("cat").stdout == ""
        h = sb.commands.run("sleep 30", background=True)
        expect_raises(Exception, sb.commands.send_stdin, h.pid, "x")
        h.kill()
        # The pid is the one inside the sandbox (its command line is the wrapper's, bash's or sleep's, depending
        # on how far the execs have got).
        h = sb.commands.run("sleep 30", background=True)
        assert "sleep 30" in sb.commands.run(f"cat /proc/{h.pid}/cmdline | tr '\\0' ' '").stdout, h.pid
        h.kill()
    finally:
        sb.kill()


@scenario
def pty_terminal_input_resize_kill():
    from e2b import PtySize

    sb = make()
    try:
        out = []
        term = sb.pty.create(PtySize(rows=24, cols=80))
        sb.pty.send_stdin(term.pid, b"stty size; tty; exit 7\n")
        try:
            term.wait(on_pty=out.append)
            raise AssertionError("exit 7 was not reported")
        except CommandExitException as e:
            assert e.exit_code == 7, e
        text = b"".join(out).decode(errors="replace")
        assert "24 80" in text and "/dev/pts/" in text, text
        out = []
        term = sb.pty.create(PtySize(rows=24, cols=80))
        sb.pty.resize(term.pid, PtySize(rows=30, cols=100))
        sb.pty.send_stdin(term.pid, b"stty size; exit\n")
        term.wait(on_pty=out.append)
        assert "30 100" in b"".join(out).decode(errors="replace"), out
        term = sb.pty.create(PtySize(rows=24, cols=80))
        assert sb.pty.kill(term.pid) is True
    finally:
        sb.kill()


@scenario
def files_write_read_list_exists_mkdir_remove_rename():
    sb = make()
    fs = sb.files
    try:
        info = fs.write("/home/user/a.txt", "hello")
        assert info.path == "/home/user/a.txt" and info.name == "a.txt"
        assert fs.read("/home/user/a.txt") == "hello"
        fs.write("rel.bin", b"\x00\x01\xff")
        assert fs.read("/home/user/rel.bin", format="bytes") == bytearray(b"\x00\x01\xff")
        fs.write("/home/user/deep/er/file.txt", "x")
        assert fs.read("/home/user/deep/er/file.txt") == "x"
        written = fs.write_files([{"path": "/home/user/m1", "data": "1"}, {"path": "/home/user/m2", "data": "22"}])
        assert sorted(w.path for w in written) == ["/home/user/m1", "/home/user/m2"]
        names = {e.name for e in fs.list("/home/user")}
        assert {"a.txt", "rel.bin", "deep", "m1", "m2"} <= names, names
        deep = {e.path for e in fs.list("/home/user/deep", depth=2)}
        assert deep == {"/home/user/deep/er", "/home/user/deep/er/file.txt"}, deep
        entry = fs.get_info("/home/user/m2")
        assert entry.size == 2 and entry.type.value == "file", entry
        assert fs.exists("/home/user/a.txt") and not fs.exists("/home/user/nope")
        assert fs.make_dir("/home/user/d") is True
        assert fs.make_dir("/home/user/d") is False, "an existing directory is reported, not an error"
        moved = fs.rename("/home/user/a.txt", "/home/user/d/b.txt")
        assert moved.path == "/home/user/d/b.txt"
        assert fs.read("/home/user/d/b.txt") == "hello" and not fs.exists("/home/user/a.txt")
        fs.remove("/home/user/d")
        assert not fs.exists("/home/user/d/b.txt")
        fs.remove("/home/user/never-existed")
        expect_raises(NotFoundException, fs.read, "/home/user/missing.txt")
        # gzip and octet-stream uploads (envd 0.5.7), and streamed data.
        fs.write("/home/user/gz.txt", "squeezed " * 1000, gzip=True)
        assert fs.read("/home/user/gz.txt", gzip=True) == "squeezed " * 1000
        fs.write("/home/user/stream.bin", iter([b"ab", b"cd"]))
        assert fs.read("/home/user/stream.bin") == "abcd"
        # Files and commands see the same filesystem.
        assert sb.commands.run("cat /home/user/m2").stdout == "22"
        sb.commands.run("echo made-by-cmd > /home/user/c.txt")
        assert fs.read("/home/user/c.txt") == "made-by-cmd\n"
    finally:
        sb.kill()


@scenario
def files_watch_dir():
    sb = make()
    try:
        sb.files.make_dir("/home/user/w")
        handle = sb.files.watch_dir("/home/user/w", recursive=True)
        sb.files.write("/home/user/w/a.txt", "1")
        sb.commands.run("mkdir /home/user/w/sub && echo 2 > /home/user/w/sub/b.txt && rm /home/user/w/a.txt")
        seen = set()
        for _ in range(20):
            seen |= {(e.name, e.type.value) for e in handle.get_new_events()}
            if ("a.txt", "remove") in seen:
                break
        handle.stop()
        for want in [("a.txt", "write"), ("sub", "create"), ("sub/b.txt", "create"), ("a.txt", "remove")]:
            assert want in seen, (want, seen)
        expect_raises(NotFoundException, sb.files.watch_dir, "/home/user/nowhere")
    finally:
        sb.kill()


@scenario
def list_filters_paging_and_connect():
    tag = {"pager": f"{TAG}-p"}
    boxes = [make(metadata=tag) for _ in range(3)]
    try:
        found = Sandbox.list(query=SandboxQuery(metadata=tag)).next_items()
        assert {b.sandbox_id for b in boxes} == {s.sandbox_id for s in found}, found
        pager = Sandbox.list(query=SandboxQuery(metadata=tag), limit=2)
        first = pager.next_items()
        assert len(first) == 2 and pager.has_next
        second = pager.next_items()
        assert len(second) == 1 and not pager.has_next
        assert not Sandbox.list(query=SandboxQuery(metadata={"pager": "nobody"})).next_items()
        again = Sandbox.connect(boxes[0].sandbox_id)
        assert again.commands.run("echo -n hi").stdout == "hi"
        assert Sandbox.get_info(boxes[1].sandbox_id).metadata["pager"] == tag["pager"]
    finally:
        for b in boxes:
            b.kill()


@scenario
def set_timeout_really_ends_the_sandbox():
    sb = make(timeout=60)
    sb.set_timeout(2)
    info = sb.get_info()
    assert (info.end_at - info.started_at).total_seconds() < 10
    time.sleep(4)
    assert not sb.is_running(), "the sandbox outlived its timeout"
    expect_raises(NotFoundException, Sandbox.connect, sb.sandbox_id)
    assert Sandbox.kill(sb.sandbox_id) is False


@scenario
def pause_and_resume_by_connect():
    sb = make()
    try:
        sb.files.write("/home/user/keep", "kept")
        assert sb.pause() is not False
        state = Sandbox.get_info(sb.sandbox_id).state.value
        assert state == "paused", state
        paused = Sandbox.list(query=SandboxQuery(state=[e2b.SandboxState.PAUSED], metadata={"suite": TAG})).next_items()
        assert sb.sandbox_id in [s.sandbox_id for s in paused]
        resumed = Sandbox.connect(sb.sandbox_id)
        assert Sandbox.get_info(sb.sandbox_id).state.value == "running"
        assert resumed.files.read("/home/user/keep") == "kept"
        assert resumed.commands.run("echo -n alive").stdout == "alive"
    finally:
        sb.kill()


@scenario
def metrics_have_every_field():
    sb = make()
    try:
        sb.commands.run("head -c 1000000 /dev/urandom > /dev/null")
        metrics = sb.get_metrics()
        assert metrics, "no metrics"
        m = metrics[-1]
        assert m.cpu_count >= 1 and m.mem_total > 0 and m.disk_total > 0 and m.mem_used > 0, m
        assert m.timestamp is not None
    finally:
        sb.kill()


@scenario
def kill_and_is_running():
    sb = make()
    assert sb.is_running()
    assert sb.kill() is None or True
    assert not sb.is_running()
    assert Sandbox.kill(sb.sandbox_id) is False, "a second kill reports an unknown sandbox"
    expect_raises(Exception, sb.commands.run, "true")


@scenario
def errors_are_clear():
    e = expect_raises(Exception, Sandbox.create, template="no-such-template")
    assert "no-such-template" in str(e) and "base" in str(e), str(e)
    e = expect_raises(e2b.AuthenticationException, Sandbox.create, api_key="e2b_" + "0" * 40)
    assert "X-API-KEY" in str(e), str(e)
    expect_raises(NotFoundException, Sandbox.get_info, "i0000000000deadbeef0")
    e = expect_raises(Exception, Sandbox.create, timeout=10**9)
    assert "timeout" in str(e).lower(), str(e)


@scenario
def code_interpreter_state_errors_and_results():
    sb = CodeSandbox.create(timeout=180, metadata={"suite": TAG})
    try:
        r = sb.run_code("x = 41\nx + 1")
        assert r.text == "42", r
        assert sb.run_code("x").text == "41", "state persists between calls"
        r = sb.run_code("print('hello'); import sys; print('warn', file=sys.stderr)")
        assert r.logs.stdout == ["hello\n"] and r.logs.stderr == ["warn\n"], r.logs
        r = sb.run_code("1/0")
        assert r.error.name == "ZeroDivisionError" and "division" in r.error.value, r.error
        assert "1/0" in r.error.traceback or "ZeroDivisionError" in r.error.traceback
        seen = []
        sb.run_code("print('cb')", on_stdout=lambda m: seen.append(m.line))
        assert seen == ["cb\n"], seen
        r = sb.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
        assert r.error is None, r.error
        assert any(res.png for res in r.results), "no PNG result for a matplotlib figure"
        r = sb.run_code("console.log(6 * 7)", language="js")
        assert r.logs.stdout == ["42\n"], r.logs
        r = sb.run_code("import os; os.environ.get('ONLY_NOW')", envs={"ONLY_NOW": "yes"})
        assert r.text == "'yes'", r
        assert sb.run_code("import os; os.environ.get('ONLY_NOW')").text is None, "per-run envs are put back"
        r = sb.run_code("echo $((6 * 7)) $V", language="bash", envs={"V": "v"})
        assert r.logs.stdout == ["42 v\n"], r.logs
        # Code running past the early answer is streamed, and still answers whole.
        r = sb.run_code("import time; time.sleep(1.2); print('late'); 5")
        assert r.logs.stdout == ["late\n"] and r.text == "5", r
    finally:
        sb.kill()


@scenario
def code_interpreter_contexts():
    sb = CodeSandbox.create(timeout=180, metadata={"suite": TAG})
    try:
        ctx = sb.create_code_context()
        assert ctx.id and ctx.language == "python" and ctx.cwd == "/home/user", ctx
        sb.run_code("y = 5", context=ctx)
        assert sb.run_code("y * 2", context=ctx).text == "10"
        assert sb.run_code("'y' in globals()").text == "False", "contexts are isolated"
        tmp = sb.create_code_context(cwd="/tmp")
        assert tmp.cwd == "/tmp"
        assert sb.run_code("import os; os.getcwd()", context=tmp).text == "'/tmp'"
        ids = [c.id for c in sb.list_code_contexts()]
        assert ctx.id in ids and tmp.id in ids, ids
        sb.restart_code_context(ctx)
        r = sb.run_code("y", context=ctx)
        assert r.error and r.error.name == "NameError", "a restarted context lost its state"
        sb.remove_code_context(ctx)
        assert ctx.id not in [c.id for c in sb.list_code_contexts()]
        bash = sb.create_code_context(language="bash")
        assert sb.run_code("echo hi", context=bash).logs.stdout == ["hi\n"]
        sb.remove_code_context(bash)
        js = sb.create_code_context(language="js")
        sb.run_code("let z = 3", context=js)
        assert sb.run_code("z + 1", context=js).text == "4"
    finally:
        sb.kill()


def bench(n):
    """SDK Sandbox.create() + commands.run('true') + kill(), the latency of the whole sequence."""
    times = []
    for _ in range(n + 2):
        t = time.perf_counter()
        sb = Sandbox.create(timeout=60)
        sb.commands.run("true")
        sb.kill()
        times.append((time.perf_counter() - t) * 1000)
    times = sorted(times[2:])
    p50 = statistics.median(times)
    p90 = times[int(0.9 * (len(times) - 1))]
    print(f"BENCH create+run('true')+kill over {n} runs: p50 {p50:.1f} ms, p90 {p90:.1f} ms")


def main(argv):
    want = [a for a in argv if not a.startswith("--")]
    failed = []
    for fn in SCENARIOS:
        if "--bench-only" in argv or want and not any(w in fn.__name__ for w in want):
            continue
        t = time.perf_counter()
        try:
            fn()
            print(f"PASS {fn.__name__} ({time.perf_counter() - t:.2f} s)", flush=True)
        except Exception:
            failed.append(fn.__name__)
            print(f"FAIL {fn.__name__} ({time.perf_counter() - t:.2f} s)", flush=True)
            traceback.print_exc()
    if "--bench" in argv or "--bench-only" in argv:
        bench(100)
    # Nothing of this run may be left behind.
    left = Sandbox.list(query=SandboxQuery(metadata={"suite": TAG})).next_items()
    if left:
        failed.append("leftovers")
        print(f"FAIL sandboxes left behind: {[s.sandbox_id for s in left]}")
    print(f"{len(failed)} failed" if failed else "all scenarios passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
