# agentbox python context driver: one long-lived interpreter whose globals persist across requests.
#
# Protocol (all inside the context directory given as argv[1]):
#   requests      FIFO; each line is a request id
#   req-ID.json   {"code": str, "timeout": float|null, "cap": int, "result_cap": int, "response_cap": int,
#                  "max_results": int, "json_elements": int}; removed once read
#   resp-ID.json  written atomically when the request is done
#   resp-ID.fifo  opened by the waiting client; "done" is written to it when the response is ready
#   out-ID.txt / err-ID.txt  captured output, kept only when longer than "cap"
#   result-ID-N.EXT  a result's format longer than "result_cap" (or that did not fit in "response_cap")
#
# The response is capped here, inside the sandbox, so the host reads a bounded file: each format of
# each result is at most "result_cap" bytes (longer text is cut with a mark, longer images and JSON are
# left out), the response at most "response_cap" bytes (results that do not fit are left out), with at
# most "max_results" results and "json_elements" elements in all JSON results together; whatever is
# left out is saved to a file named in the result's "files".
#   pid           written once the driver listens
import ast
import base64
import inspect
import io
import json
import linecache
import os
import signal
import sys
import time
import traceback
import warnings

DIR = sys.argv[1]
DRIVER = os.path.abspath(__file__)
os.environ.setdefault("MPLBACKEND", "Agg")
# Debian's matplotlib reads its defaults from /etc/matplotlibrc, which a sandbox may not expose;
# the same file ships under /usr/share.
if "MATPLOTLIBRC" not in os.environ and not os.path.exists("/etc/matplotlibrc"):
    for _rc in ("/usr/share/matplotlib/mpl-data/matplotlibrc",):
        if os.path.isfile(_rc):
            os.environ["MATPLOTLIBRC"] = _rc
warnings.filterwarnings("ignore", message=".*non-interactive.*")
warnings.filterwarnings("ignore", message=".*cannot be shown.*")


class ExecutionTimeout(BaseException):
    """Raised inside user code when its time limit passes."""


state = {"busy": False, "cell": 0, "display": [], "loop": None}


def on_sigint(signum, frame):
    if state["busy"]:
        raise KeyboardInterrupt
    # Idle: nothing to interrupt.


def on_alarm(signum, frame):
    if state["busy"]:
        raise ExecutionTimeout("execution exceeded its time limit")


signal.signal(signal.SIGINT, on_sigint)
signal.signal(signal.SIGALRM, on_alarm)

MIMES = (
    ("_repr_png_", "png"),
    ("_repr_jpeg_", "jpeg"),
    ("_repr_svg_", "svg"),
    ("_repr_html_", "html"),
    ("_repr_markdown_", "markdown"),
    ("_repr_latex_", "latex"),
    ("_repr_json_", "json"),
)


def rich(value, main=False):
    out = {}
    if not isinstance(value, type):
        for meth, key in MIMES:
            f = getattr(value, meth, None)
            if not callable(f):
                continue
            try:
                data = f()
            except Exception:
                continue
            if isinstance(data, tuple):
                data = data[0]
            if data is None:
                continue
            if key in ("png", "jpeg"):
                if isinstance(data, (bytes, bytearray)):
                    data = base64.b64encode(bytes(data)).decode("ascii")
                elif not isinstance(data, str):
                    continue
            elif key != "json":
                data = str(data)
            out[key] = data
    try:
        out["text"] = repr(value)
    except Exception as e:  # a broken __repr__ must not break the cell
        out["text"] = "<unrepresentable %s: %s>" % (type(value).__name__, e)
    if main:
        out["is_main_result"] = True
    return out


def display(*values):
    """Shows values as rich results (PNG, HTML, ...) like a notebook's display()."""
    for v in values:
        state["display"].append(rich(v))


ns = {"__name__": "__main__", "__builtins__": __builtins__, "display": display}


def figures():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    out = []
    try:
        for num in plt.get_fignums():
            fig = plt.figure(num)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", bbox_inches="tight")
            out.append({"png": base64.b64encode(buf.getvalue()).decode("ascii"), "text": repr(fig)})
        plt.close("all")
    except Exception as e:
        out.append({"text": "<figure could not be rendered: %s>" % e})
    return out


def user_tb(tb):
    while tb is not None and tb.tb_frame.f_code.co_filename == DRIVER:
        tb = tb.tb_next
    return tb


def run_code(code, filename):
    if state["loop"] is None:
        import asyncio

        state["loop"] = asyncio.new_event_loop()
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    flags = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
    tree = ast.parse(code, filename, "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    result = None

    def ev(codeobj):
        r = eval(codeobj, ns)
        if codeobj.co_flags & inspect.CO_COROUTINE:
            r = state["loop"].run_until_complete(r)
        return r

    if tree.body:
        ev(compile(tree, filename, "exec", flags=flags))
    if last is not None:
        result = ev(compile(last, filename, "eval", flags=flags))
    return result


def read_capped(path, cap):
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= cap:
            data = f.read()
            keep = False
            text = data.decode("utf-8", "replace")
        else:
            head = f.read(cap - cap // 2)
            f.seek(size - cap // 2)
            tail = f.read()
            keep = True
            cut = size - len(head) - len(tail)
            text = (
                head.decode("utf-8", "ignore")
                + "\n[... %d bytes truncated; full output saved to %s ...]\n" % (cut, path)
                + tail.decode("utf-8", "ignore")
            )
    if not keep:
        os.unlink(path)
    return text, (path if keep else None), size


def handle(rid):
    req_path = os.path.join(DIR, "req-%s.json" % rid)
    try:
        with open(req_path) as f:
            req = json.load(f)
        os.unlink(req_path)
    except Exception as e:
        finish(rid, {"error": {"name": "ProtocolError", "value": "cannot read request: %s" % e, "traceback": ""}})
        return
    cap = int(req.get("cap") or 16384)
    timeout = req.get("timeout")
    state["cell"] += 1
    filename = "<cell-%d>" % state["cell"]
    out_path = os.path.join(DIR, "out-%s.txt" % rid)
    err_path = os.path.join(DIR, "err-%s.txt" % rid)
    state["display"] = []
    resp = {"results": [], "error": None, "timed_out": False}
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    started = time.monotonic()
    value = None
    try:
        state["busy"] = True
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, float(timeout))
        try:
            value = run_code(req["code"], filename)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            state["busy"] = False
    except BaseException as e:  # user code may raise anything, SystemExit included
        if isinstance(e, ExecutionTimeout):
            resp["timed_out"] = True
        if isinstance(e, SyntaxError) and e.filename == filename:
            tb_text = "".join(traceback.format_exception_only(type(e), e))
        else:
            tb_text = "".join(traceback.format_exception(type(e), e, user_tb(e.__traceback__)))
        resp["error"] = {"name": type(e).__name__, "value": str(e), "traceback": tb_text}
    finally:
        state["busy"] = False
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    resp["duration_ms"] = int((time.monotonic() - started) * 1000)
    results = list(state["display"]) + figures()
    if resp["error"] is None and value is not None:
        results.append(rich(value, main=True))
    resp["results"] = results
    resp["stdout"], resp["stdout_file"], resp["stdout_bytes"] = read_capped(out_path, cap)
    resp["stderr"], resp["stderr_file"], resp["stderr_bytes"] = read_capped(err_path, cap)
    try:
        resp = cap_response(rid, resp, req)
    except Exception as e:  # never answer uncapped
        resp["results"] = [{"text": "<results could not be sized: %s>" % e, "truncated": True}]
    finish(rid, resp)


TEXT_FORMATS = ("text", "html", "markdown", "latex", "svg")
EXTENSIONS = {"text": "txt", "html": "html", "markdown": "md", "latex": "tex", "svg": "svg",
              "png": "png", "jpeg": "jpg", "json": "json"}


def encoded(key, data):
    """A format's value as the bytes saved to a file."""
    if key == "json":
        return json.dumps(data, default=repr).encode("utf-8")
    if key in ("png", "jpeg"):
        try:
            return base64.b64decode(data)
        except Exception:
            return str(data).encode("utf-8", "replace")
    return str(data).encode("utf-8", "replace")


def spill(rid, n, key, blob):
    path = os.path.join(DIR, "result-%s-%d.%s" % (rid, n, EXTENSIONS.get(key, "bin")))
    with open(path, "wb") as f:
        f.write(blob)
    return path


def head_text(blob, keep):
    return blob[:keep].decode("utf-8", "ignore")


def json_elements(text):
    """At least the number of elements in JSON text (separators and openings; in strings too)."""
    return text.count(",") + text.count(":") + text.count("[") + text.count("{")


def cap_result(rid, n, res, cap, elements_left):
    """Cuts each format of one result to `cap` bytes, and leaves out its JSON when it has more elements
    than are left (elements_left[0]); what is cut is saved to a file."""
    for key in [k for k in res if k in EXTENSIONS]:
        data = res[key]
        if key == "json":
            # One serialization, written as is: a large value costs the sandbox its size once more.
            text = json.dumps(data, default=repr)
            count = json_elements(text)
            if len(text) <= cap and count <= elements_left[0]:
                elements_left[0] -= count
                continue
            path = os.path.join(DIR, "result-%s-%d.json" % (rid, n))
            with open(path, "w") as f:
                f.write(text)
            res.setdefault("files", {})[key] = path
            res["truncated"] = True
            del res[key]
            del text
            continue
        size = len(str(data).encode("utf-8", "replace"))
        if size <= cap:
            continue
        blob = encoded(key, data)
        path = spill(rid, n, key, blob)
        res.setdefault("files", {})[key] = path
        res["truncated"] = True
        if key in TEXT_FORMATS:
            kept = head_text(blob, max(0, cap - 200))
            res[key] = kept + "\n[... %d bytes truncated; full result saved to %s ...]" % (
                len(blob) - len(kept.encode("utf-8")), path)
        else:
            del res[key]
    return res


def leave_out(rid, n, res):
    """Saves every format of a result that does not fit in the response to files, keeping a mark."""
    for key in [k for k in res if k in EXTENSIONS]:
        path = spill(rid, n, key, encoded(key, res[key]))
        res.setdefault("files", {})[key] = path
        del res[key]
    res["truncated"] = True
    res["text"] = "[... result left out: the response is over its size limit; saved to %s ...]" % (
        ", ".join(sorted(res["files"].values())))
    return res


def cap_response(rid, resp, req):
    result_cap = int(req.get("result_cap") or 1048576)
    response_cap = int(req.get("response_cap") or 4194304)
    max_results = int(req.get("max_results") or 100)
    results = resp["results"]
    if len(results) > max_results:
        dropped = len(results) - max_results + 1
        results = results[: max_results - 1]
        results.append({"text": "[... %d more results left out ...]" % dropped, "truncated": True})
    elements_left = [int(req.get("json_elements") or 262144)]
    results = [cap_result(rid, n, r, result_cap, elements_left) for n, r in enumerate(results)]
    err = resp.get("error")
    if err:
        for key in ("value", "traceback"):
            text = str(err.get(key) or "")
            if len(text.encode("utf-8", "replace")) > result_cap:
                blob = text.encode("utf-8", "replace")
                kept = head_text(blob, max(0, result_cap - 100))
                err[key] = kept + "\n[... %d bytes truncated ...]" % (len(blob) - len(kept.encode("utf-8")))
    resp["results"] = []
    budget = response_cap - len(json.dumps(resp, default=repr)) - 1024
    for n, r in enumerate(results):
        size = len(json.dumps(r, default=repr)) + 2
        if size > budget:
            r = leave_out(rid, n, r)
            size = len(json.dumps(r, default=repr)) + 2
        budget -= size
        resp["results"].append(r)
    return resp


def finish(rid, resp):
    final = os.path.join(DIR, "resp-%s.json" % rid)
    tmp = final + ".tmp"
    with open(tmp, "w") as f:
        json.dump(resp, f, default=repr)
    os.replace(tmp, final)
    try:
        fd = os.open(os.path.join(DIR, "resp-%s.fifo" % rid), os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"done\n")
        os.close(fd)
    except OSError:
        pass  # the client gave up; the response file stays for it


def main():
    fifo = os.path.join(DIR, "requests")
    if not os.path.exists(fifo):
        os.mkfifo(fifo, 0o600)
    fd = os.open(fifo, os.O_RDWR)
    with open(os.path.join(DIR, "pid.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(DIR, "pid.tmp"), os.path.join(DIR, "pid"))
    buf = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            time.sleep(0.05)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            rid = line.decode("utf-8", "replace").strip()
            if rid and all(c.isalnum() or c == "-" for c in rid):
                handle(rid)


if __name__ == "__main__":
    main()
