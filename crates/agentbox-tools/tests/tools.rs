//! The tools against a sandbox: shell, files, code contexts with rich output.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use agentbox_tools::search::{SearchConfig, WebSearch};
use agentbox_tools::{ToolErrorKind, ToolRegistry};
use base64::Engine as _;
use common::TestSandbox;
use serde_json::{Value, json};

fn registry() -> ToolRegistry {
    ToolRegistry::standard(WebSearch::new(SearchConfig::default()).unwrap())
}

async fn call(sb: &TestSandbox, tool: &str, input: Value) -> Value {
    match registry().call(tool, &sb.ctx, input.clone()).await {
        Ok(v) => v,
        Err(e) => panic!("{tool} {input} failed: {e:?}"),
    }
}

async fn call_err(sb: &TestSandbox, tool: &str, input: Value) -> agentbox_tools::ToolError {
    match registry().call(tool, &sb.ctx, input.clone()).await {
        Ok(v) => panic!("{tool} {input} should fail, got {v}"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_runs_with_cwd_env_exit_code_and_timeout() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::new().await;
    let out = call(
        &sb,
        "shell",
        json!({"command": "mkdir -p sub && cd sub && pwd && echo $GREETING >&2; exit 3", "env": {"GREETING": "hello"}}),
    )
    .await;
    assert_eq!(out["exit_code"], 3);
    assert_eq!(out["stdout"].as_str().unwrap().trim(), format!("{}/sub", sb.home));
    assert_eq!(out["stderr"].as_str().unwrap().trim(), "hello");
    assert_eq!(out["timed_out"], false);

    let out = call(&sb, "shell", json!({"command": "pwd", "cwd": "sub"})).await;
    assert_eq!(out["stdout"].as_str().unwrap().trim(), format!("{}/sub", sb.home));

    let out = call(&sb, "shell", json!({"command": "echo start; sleep 30", "timeout_secs": 1})).await;
    assert_eq!(out["timed_out"], true);
    assert_eq!(out["exit_code"], 124);
    assert!(out["stderr"].as_str().unwrap().contains("killed after 1s"), "{out}");

    let err = call_err(&sb, "shell", json!({"command": "  "})).await;
    assert_eq!(err.kind, ToolErrorKind::InvalidInput);
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_background_returns_pid_and_output_file() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::new().await;
    let out =
        call(&sb, "shell", json!({"command": "echo from-background; sleep 0.2; echo done", "background": true})).await;
    assert!(out["pid"].as_u64().unwrap() > 0);
    let file = out["output_file"].as_str().unwrap().to_owned();
    let mut content = String::new();
    for _ in 0..100 {
        let read = registry().call("read_file", &sb.ctx, json!({"path": file})).await;
        if let Ok(r) = read {
            content = r["content"].as_str().unwrap().to_owned();
            if content.contains("done") {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(content, "from-background\ndone\n");
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_output_is_cut_with_a_mark_and_saved_in_full() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::with(|c| c.max_output_bytes = 1000).await;
    // 20000 numbered lines, about 108 KB.
    let out = call(&sb, "shell", json!({"command": "seq 1 20000"})).await;
    let shown = out["stdout"].as_str().unwrap();
    assert_eq!(out["truncated"], true);
    assert!(shown.starts_with("1\n2\n3\n"), "{shown}");
    assert!(shown.ends_with("19999\n20000\n"), "{shown}");
    let file = out["stdout_file"].as_str().unwrap();
    let total: usize = (1..=20000).map(|i: u32| i.to_string().len() + 1).sum();
    assert!(
        shown.contains(&format!("[... {} bytes truncated; full output saved to {file} ...]", total - 1000)),
        "{shown}"
    );
    let saved = call(&sb, "download_file", json!({"path": file})).await;
    assert_eq!(saved["size"], total);
    assert!(out.get("stderr_file").is_none());
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_read_write_edit_list_delete_and_transfer_bytes() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::new().await;
    let body: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    let w = call(&sb, "write_file", json!({"path": "proj/notes.txt", "content": body})).await;
    assert_eq!(w["path"], format!("{}/proj/notes.txt", sb.home));
    assert_eq!(w["bytes_written"], body.len());

    let r = call(&sb, "read_file", json!({"path": "proj/notes.txt", "start_line": 3, "end_line": 4})).await;
    assert_eq!(r["content"], "line 3\nline 4\n");
    assert_eq!(
        (r["start_line"].as_u64(), r["end_line"].as_u64(), r["total_lines"].as_u64()),
        (Some(3), Some(4), Some(10))
    );

    let e =
        call(&sb, "edit_file", json!({"path": "proj/notes.txt", "old_text": "line 5\n", "new_text": "line five\n"}))
            .await;
    assert_eq!((e["replacements"].as_u64(), e["first_line"].as_u64()), (Some(1), Some(5)));
    let r = call(&sb, "read_file", json!({"path": "proj/notes.txt", "start_line": 5, "end_line": 5})).await;
    assert_eq!(r["content"], "line five\n");

    let err = call_err(&sb, "edit_file", json!({"path": "proj/notes.txt", "old_text": "line", "new_text": "x"})).await;
    assert_eq!(err.kind, ToolErrorKind::Conflict);
    assert!(err.message.contains("occurs 10 times"), "{err}");
    let err =
        call_err(&sb, "edit_file", json!({"path": "proj/notes.txt", "old_text": "absent", "new_text": "x"})).await;
    assert_eq!(err.kind, ToolErrorKind::NotFound);
    let all = call(
        &sb,
        "edit_file",
        json!({"path": "proj/notes.txt", "old_text": "line", "new_text": "row", "replace_all": true}),
    )
    .await;
    assert_eq!(all["replacements"], 10);

    let png = [0x89u8, b'P', b'N', b'G', 0, 1, 2, 255];
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    call(&sb, "upload_file", json!({"path": "proj/img.bin", "content_base64": b64})).await;
    let d = call(&sb, "download_file", json!({"path": "proj/img.bin"})).await;
    assert_eq!(d["content_base64"], b64);
    let err = call_err(&sb, "read_file", json!({"path": "proj/img.bin"})).await;
    assert!(err.message.contains("binary file") && err.message.contains("download_file"), "{err}");

    let l = call(&sb, "list_files", json!({"path": "proj"})).await;
    let names: Vec<&str> = l["entries"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(names, [format!("{}/proj/img.bin", sb.home), format!("{}/proj/notes.txt", sb.home)]);
    let l = call(&sb, "list_files", json!({"recursive": true})).await;
    assert!(l["entries"].as_array().unwrap().iter().any(|e| e["path"].as_str().unwrap().ends_with("proj/notes.txt")));

    let del = call(&sb, "delete_file", json!({"path": "proj/notes.txt"})).await;
    assert_eq!(del["kind"], "file");
    let err = call_err(&sb, "read_file", json!({"path": "proj/notes.txt"})).await;
    assert_eq!(err.kind, ToolErrorKind::NotFound);
    assert_eq!(err.message, format!("file not found: {}/proj/notes.txt", sb.home));
    let err = call_err(&sb, "delete_file", json!({"path": "~"})).await;
    assert_eq!(err.kind, ToolErrorKind::InvalidInput);
    let err = call_err(&sb, "read_file", json!({"path": "proj/img.bin", "start_line": 0})).await;
    assert_eq!(err.kind, ToolErrorKind::InvalidInput);
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_reads_stop_early_and_say_where_to_continue() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::with(|c| c.max_read_bytes = 100).await;
    let body: String = (1..=100).map(|i| format!("row {i:03}\n")).collect();
    call(&sb, "write_file", json!({"path": "big.txt", "content": body})).await;
    let r = call(&sb, "read_file", json!({"path": "big.txt"})).await;
    assert_eq!(r["end_line"], 12);
    assert_eq!(r["next_start_line"], 13);
    let r = call(&sb, "read_file", json!({"path": "big.txt", "start_line": 13})).await;
    assert!(r["content"].as_str().unwrap().starts_with("row 013\n"));
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_context_keeps_state_and_reports_errors_and_timeouts() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::new().await;
    let out = call(&sb, "run_code", json!({"code": "import math\nx = 40\nprint('hi')"})).await;
    assert_eq!(out["stdout"], "hi\n");
    assert_eq!(out["context_id"], "default-python");
    assert_eq!(out["results"], json!([]));
    let out = call(&sb, "run_code", json!({"code": "x + int(math.sqrt(4))"})).await;
    assert_eq!(out["results"], json!([{"text": "42", "is_main_result": true}]));

    let out = call(&sb, "run_code", json!({"code": "def f():\n    return 1/0\nf()"})).await;
    let err = &out["error"];
    assert_eq!(err["name"], "ZeroDivisionError");
    assert_eq!(err["value"], "division by zero");
    let tb = err["traceback"].as_str().unwrap();
    assert!(tb.contains("<cell-") && tb.contains("return 1/0") && !tb.contains("python_driver"), "{tb}");

    let out = call(&sb, "run_code", json!({"code": "while True:\n    pass", "timeout_secs": 1})).await;
    assert_eq!(out["timed_out"], true);
    assert_eq!(out["error"]["name"], "ExecutionTimeout");
    let out = call(&sb, "run_code", json!({"code": "x"})).await;
    assert_eq!(out["results"][0]["text"], "40", "the context survives a timeout with its state");

    // Relative paths in code mean the same place as for the file tools: the user's home.
    let out =
        call(&sb, "run_code", json!({"code": "import os\nopen('rel.txt', 'w').write('from code')\nos.getcwd()"})).await;
    assert_eq!(out["results"][0]["text"], "'/home/user'", "{out}");
    let read = call(&sb, "read_file", json!({"path": "rel.txt"})).await;
    assert!(read.to_string().contains("from code"), "{read}");

    let out = call(
        &sb,
        "run_code",
        json!({"code": "import sys\nsys.stderr.write('warn\\n')\nimport os\nos.system('echo from-child')"}),
    )
    .await;
    assert_eq!(out["stderr"], "warn\n");
    assert_eq!(out["stdout"], "from-child\n", "output of child processes is captured too");

    let out = call(&sb, "run_code", json!({"code": "def broken(:"})).await;
    assert_eq!(out["error"]["name"], "SyntaxError");
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_rich_results_carry_png() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::new().await;
    // A PNG built with the standard library only, shown through the same rich-output path as figures.
    let code = r#"
import struct, zlib
def chunk(kind, data):
    c = kind + data
    return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xffffffff)
class Img:
    def _repr_png_(self):
        raw = b"".join(b"\x00" + b"\xff\x00\x00" * 4 for _ in range(4))
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
display(Img())
Img()
"#;
    let out = call(&sb, "run_code", json!({"code": code})).await;
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{out}");
    for r in results {
        let png = base64::engine::general_purpose::STANDARD.decode(r["png"].as_str().unwrap()).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
    }
    assert_eq!(results[1]["is_main_result"], true);

    let probe = call(
        &sb,
        "run_code",
        json!({"code": "import importlib.util\nimportlib.util.find_spec('matplotlib') is not None"}),
    )
    .await;
    if probe["results"][0]["text"] == "True" {
        let out = call(
            &sb,
            "run_code",
            json!({"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()"}),
        )
        .await;
        assert!(out["error"].is_null(), "{out}");
        let png = base64::engine::general_purpose::STANDARD.decode(out["results"][0]["png"].as_str().unwrap()).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 1000, "a real plot, {} bytes", png.len());
    } else {
        eprintln!("matplotlib is not installed here; the figure path was checked with a standard-library PNG only");
    }
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_context_keeps_state() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::new().await;
    let out =
        call(&sb, "run_code", json!({"language": "javascript", "code": "let a = 5; var b = 2; console.log('log', a)"}))
            .await;
    assert_eq!(out["stdout"], "log 5\n");
    assert_eq!(out["context_id"], "default-javascript");
    let out = call(&sb, "run_code", json!({"language": "javascript", "code": "a * b + [1, 2].length"})).await;
    assert_eq!(out["results"][0]["text"], "12");
    let out =
        call(&sb, "run_code", json!({"language": "javascript", "code": "const os = require('os'); typeof os.cpus"}))
            .await;
    assert_eq!(out["results"][0]["text"], "'function'");
    let out = call(
        &sb,
        "run_code",
        json!({"language": "javascript", "code": "await new Promise(r => setTimeout(() => r(7), 10))"}),
    )
    .await;
    assert!(out["error"].is_null(), "{out}");
    let out = call(&sb, "run_code", json!({"language": "javascript", "code": "null.x"})).await;
    assert_eq!(out["error"]["name"], "TypeError");
    let out =
        call(&sb, "run_code", json!({"language": "javascript", "code": "while (true) {}", "timeout_secs": 1})).await;
    assert_eq!(out["timed_out"], true);
    let out = call(&sb, "run_code", json!({"language": "javascript", "code": "a"})).await;
    assert_eq!(out["results"][0]["text"], "5");
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_are_created_listed_restarted_and_deleted() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::new().await;
    let made =
        call(&sb, "code_context", json!({"action": "create", "language": "python", "context_id": "analysis"})).await;
    assert_eq!(made["contexts"][0]["id"], "analysis");
    let err = call_err(&sb, "code_context", json!({"action": "create", "context_id": "analysis"})).await;
    assert_eq!(err.kind, ToolErrorKind::Conflict);
    let js = call(&sb, "code_context", json!({"action": "create", "language": "javascript"})).await;
    let js_id = js["contexts"][0]["id"].as_str().unwrap().to_owned();
    call(&sb, "run_code", json!({"context_id": js_id, "code": "1"})).await;

    call(&sb, "run_code", json!({"context_id": "analysis", "code": "v = 'kept'"})).await;
    let out = call(&sb, "run_code", json!({"context_id": "analysis", "code": "v"})).await;
    assert_eq!(out["results"][0]["text"], "'kept'");
    let out = call(&sb, "run_code", json!({"code": "'v' in globals()"})).await;
    assert_eq!(out["results"][0]["text"], "False", "contexts are isolated from each other");
    let err = call_err(&sb, "run_code", json!({"context_id": "analysis", "language": "javascript", "code": "1"})).await;
    assert_eq!(err.kind, ToolErrorKind::InvalidInput);

    let list = call(&sb, "code_context", json!({"action": "list"})).await;
    let mut seen: Vec<(String, String, String)> = list["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().into(),
                c["language"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    seen.sort();
    let mut want = vec![
        ("analysis".to_owned(), "python".to_owned(), "alive".to_owned()),
        ("default-python".to_owned(), "python".to_owned(), "alive".to_owned()),
        (js_id.clone(), "javascript".to_owned(), "alive".to_owned()),
    ];
    want.sort();
    assert_eq!(seen, want);

    call(&sb, "code_context", json!({"action": "restart", "context_id": "analysis"})).await;
    let out = call(&sb, "run_code", json!({"context_id": "analysis", "code": "v"})).await;
    assert_eq!(out["error"]["name"], "NameError", "a restart drops the state");

    call(&sb, "code_context", json!({"action": "delete", "context_id": "analysis"})).await;
    let err = call_err(&sb, "run_code", json!({"context_id": "analysis", "code": "1"})).await;
    assert_eq!(err.kind, ToolErrorKind::NotFound);
    assert!(err.message.contains("code_context"), "{err}");
    let err = call_err(&sb, "code_context", json!({"action": "delete", "context_id": "analysis"})).await;
    assert_eq!(err.kind, ToolErrorKind::NotFound);
    let err = call_err(&sb, "code_context", json!({"action": "create", "language": "bash"})).await;
    assert_eq!(err.kind, ToolErrorKind::Unsupported);
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_interpreter_is_reported_and_the_default_context_recovers() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::new().await;
    call(&sb, "run_code", json!({"code": "y = 1"})).await;
    let err = call_err(&sb, "run_code", json!({"code": "import os\nos._exit(3)"})).await;
    assert!(err.message.contains("exited while running this code") && err.message.contains("restarted"), "{err}");
    let out = call(&sb, "run_code", json!({"code": "'y' in globals()"})).await;
    assert_eq!(out["results"][0]["text"], "False");

    call(&sb, "code_context", json!({"action": "create", "context_id": "fragile"})).await;
    let err = call_err(&sb, "run_code", json!({"context_id": "fragile", "code": "import os\nos._exit(3)"})).await;
    assert!(err.message.contains("action=restart"), "{err}");
    let err = call_err(&sb, "run_code", json!({"context_id": "fragile", "code": "1"})).await;
    assert!(err.message.contains("has exited"), "{err}");
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_runs_statelessly() {
    if common::not_root() {
        return;
    }
    let sb = TestSandbox::new().await;
    let out = call(&sb, "run_code", json!({"language": "bash", "code": "echo $((6 * 7)); exit 2"})).await;
    assert_eq!(out["stdout"], "42\n");
    assert_eq!(out["exit_code"], 2);
    assert!(out.get("context_id").is_none());
    sb.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_work_in_the_home_of_a_user_not_named_user() {
    if common::not_root() {
        return;
    }
    let alice = agentbox_core::config::RunAs { name: "alice".into(), uid: 1001, gid: 1001 };
    let sb = TestSandbox::with_configs(|c| c.security.run_as = alice, |_| {}).await;
    assert_eq!(sb.home, "/home/alice");
    call(&sb, "write_file", json!({"path": "notes.txt", "content": "hi"})).await;
    let out = call(&sb, "shell", json!({"command": "pwd; cat /home/alice/notes.txt"})).await;
    assert_eq!(out["stdout"].as_str().unwrap(), "/home/alice\nhi");
    sb.close().await;
}
