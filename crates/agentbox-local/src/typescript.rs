//! TypeScript is turned into JavaScript on the host before a sandbox's Node.js runs it: types,
//! interfaces, enums and the rest of TypeScript's syntax are compiled away with oxc's transformer, so
//! TypeScript runs on every Node.js a sandbox may have (type stripping inside Node.js needs 22.6 or newer).

use std::path::Path;

use oxc::allocator::Allocator;
use oxc::codegen::Codegen;
use oxc::parser::Parser;
use oxc::semantic::SemanticBuilder;
use oxc::span::SourceType;
use oxc::transformer::{TransformOptions, Transformer};

/// Why TypeScript source could not be turned into JavaScript: the compiler's messages, one a line.
#[derive(Debug, thiserror::Error)]
#[error("the TypeScript code does not compile: {0}")]
pub struct CompileError(pub String);

/// Deepest bracket nesting accepted: the compiler recurses once per level, and a thread's stack is finite.
pub const MAX_NESTING: usize = 1000;

/// The stack of the thread that compiles (a level of nesting costs a few KiB of it).
const STACK: usize = 64 << 20;

impl CompileError {
    /// JavaScript that reports this error as Node.js reports a syntax error: the message on stderr, exit code 1.
    /// So TypeScript that does not compile fails like Python or JavaScript that does not parse, as an
    /// execution with its error, not as a refused request.
    #[must_use]
    pub fn to_script(&self) -> Compiled {
        let message = serde_json::Value::String(format!("SyntaxError: {self}\n"));
        Compiled { code: format!("process.stderr.write({message});\nprocess.exitCode = 1;\n"), module: false }
    }
}

/// JavaScript compiled from TypeScript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The JavaScript.
    pub code: String,
    /// Whether it is an ES module (it imports or exports): Node.js then runs it from a `.mjs` file, and
    /// from a `.cjs` file otherwise, whatever its version guesses for `.js`.
    pub module: bool,
}

impl Compiled {
    /// The file extension Node.js runs this code with.
    #[must_use]
    pub fn extension(&self) -> &'static str {
        if self.module { "mjs" } else { "cjs" }
    }
}

/// Compiles TypeScript `source` (a script or a module) into JavaScript for Node.js, on a thread of its
/// own with a stack large enough for [`MAX_NESTING`] levels.
///
/// # Errors
/// [`CompileError`] with the parser's or the transformer's messages when `source` is not valid TypeScript,
/// or when it nests brackets more than [`MAX_NESTING`] deep.
pub fn to_javascript(source: &str) -> Result<Compiled, CompileError> {
    let depth = nesting(source);
    if depth > MAX_NESTING {
        return Err(CompileError(format!(
            "brackets are nested {depth} deep, more than the {MAX_NESTING} accepted; flatten the code"
        )));
    }
    let source = source.to_owned();
    let compile = std::thread::Builder::new()
        .name("agentbox-tsc".into())
        .stack_size(STACK)
        .spawn(move || std::panic::catch_unwind(|| compile(&source)))
        .map_err(|e| CompileError(format!("cannot start the compiler's thread: {e}")))?;
    match compile.join() {
        Ok(Ok(result)) => result,
        Ok(Err(_)) | Err(_) => Err(CompileError("the compiler failed on this code; run it as javascript".into())),
    }
}

/// The deepest nesting of `(`, `[` and `{` (brackets inside strings count too: an upper bound).
fn nesting(source: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in source.bytes() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn compile(source: &str) -> Result<Compiled, CompileError> {
    let allocator = Allocator::default();
    let source_type = SourceType::ts();
    let parsed = Parser::new(&allocator, source, source_type).parse();
    if parsed.diagnostics.has_errors() {
        return Err(CompileError(messages(&parsed.diagnostics)));
    }
    let module = parsed.module_record.has_module_syntax;
    let mut program = parsed.program;
    let scoping = SemanticBuilder::new().with_enum_eval(true).build(&program).semantic.into_scoping();
    let options = TransformOptions::default();
    let transformed =
        Transformer::new(&allocator, Path::new("code.ts"), &options).build_with_scoping(scoping, &mut program);
    if transformed.diagnostics.has_errors() {
        return Err(CompileError(messages(&transformed.diagnostics)));
    }
    Ok(Compiled { code: Codegen::new().build(&program).code, module })
}

fn messages(diagnostics: &oxc::diagnostics::Diagnostics) -> String {
    diagnostics.errors().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_stripped_and_runtime_syntax_is_compiled() {
        let js = to_javascript(
            "interface P { x: number }\nenum Color { Red = 1 }\nconst p: P = { x: 6 };\n\
             function mul(a: number, b: number): number { return a * b; }\nconsole.log(mul(p.x, 7) as number, Color.Red);",
        )
        .unwrap();
        assert!(!js.module, "no import or export: a script");
        let js = js.code;
        assert!(!js.contains("interface") && !js.contains(": number") && !js.contains(" as number"), "{js}");
        assert!(js.contains("console.log(mul(p.x, 7), Color.Red)"), "{js}");
        assert!(js.contains("Color[Color[\"Red\"] = 1]"), "enums become objects: {js}");
    }

    #[test]
    fn imports_and_exports_make_a_module() {
        let js = to_javascript("import { x } from './x.mjs';\nexport const y: number = x;").unwrap();
        assert_eq!((js.module, js.extension()), (true, "mjs"), "{}", js.code);
        assert!(js.code.contains("export const y = x;"), "{}", js.code);
    }

    #[test]
    fn invalid_typescript_is_an_error_with_the_reason() {
        let e = to_javascript("const x: = 1;").unwrap_err();
        assert!(e.0.contains("Unexpected token"), "{e}");
    }

    #[test]
    fn an_error_becomes_a_script_that_reports_it() {
        let script = to_javascript("const x: = 1;").unwrap_err().to_script();
        assert!(
            !script.module && script.code.starts_with("process.stderr.write(\"SyntaxError: the TypeScript"),
            "{}",
            script.code
        );
        assert!(script.code.ends_with("process.exitCode = 1;\n"), "{}", script.code);
    }

    #[test]
    fn deep_nesting_is_refused_before_compiling() {
        let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        let e = to_javascript(&deep).unwrap_err();
        assert!(e.0.contains("nested 100000 deep"), "{e}");
        let ok = format!("{}1{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(to_javascript(&ok).is_ok());
    }
}
