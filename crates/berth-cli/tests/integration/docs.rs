//! The Markdown of the repository renders whole: every code fence is closed, and no line that
//! looks like a closing fence has text after it. Such a line does not close the block (in
//! CommonMark it is content), so everything after it renders as code, or vanishes on a page
//! that renders it — README.md once lost half its text to "``` A reservation binds …".
//!
//! Every `*.md` file of the repository is checked (build output and hidden directories
//! aside), so a new page is covered without being listed here.

use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every Markdown file under `dir`, skipping `target` directories and hidden ones (`.git`).
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if !name.starts_with('.') && name != "target" {
                markdown_files(&path, out);
            }
        } else if kind.is_file() && name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// A fence line: its character (`` ` `` or `~`), how many, and what follows them.
fn fence(line: &str) -> Option<(char, usize, &str)> {
    // Fences may be indented (inside a list item); the indentation does not matter here.
    let text = line.trim_start();
    let c = text.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let run = text.chars().take_while(|x| *x == c).count();
    (run >= 3).then(|| (c, run, &text[run..]))
}

/// What is wrong with the fences of `text`, one line per problem (`line N: …`).
fn fence_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // The open fence: its character, length and line.
    let mut open: Option<(char, usize, usize)> = None;
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        let Some((c, run, rest)) = fence(line) else {
            continue;
        };
        match open {
            None => {
                // A backtick "fence" whose info string holds a backtick is inline code.
                if c == '`' && rest.contains('`') {
                    continue;
                }
                open = Some((c, run, number));
            }
            Some((open_c, open_run, opened)) => {
                if c != open_c || run < open_run {
                    continue; // content of the block, e.g. a shorter fence inside a longer one
                }
                if rest.trim().is_empty() {
                    open = None;
                } else {
                    problems.push(format!(
                        "line {number}: text after a closing fence (the block opened at line {opened} stays open): {line:?}"
                    ));
                }
            }
        }
    }
    if let Some((_, _, opened)) = open {
        problems.push(format!("line {opened}: a code fence that is never closed"));
    }
    problems
}

#[test]
fn every_markdown_file_has_balanced_fences_and_no_text_after_a_closing_fence() {
    let root = root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    for expected in ["README.md", "ARCHITECTURE.md", "docs/protocol.md"] {
        assert!(
            files.iter().any(|f| f.ends_with(expected)),
            "{expected} was not found under {}",
            root.display()
        );
    }
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        problems.extend(
            fence_problems(&text)
                .into_iter()
                .map(|p| format!("{shown}: {p}")),
        );
    }
    assert!(
        problems.is_empty(),
        "Markdown that does not render as written:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_finds_what_broke_the_readme() {
    let broken = "text\n\n```rust\nfn main() {}\n``` A reservation binds your own\nmore text\n";
    let problems = fence_problems(broken);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("line 5: text after a closing fence"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("line 3: a code fence that is never closed"),
        "{problems:?}"
    );

    let fine = "```rust\nfn main() {}\n```\n\n  ~~~\n  ```c\n  ~~~\n````md\n```sh\n```\n````\n```a``` is inline code\n";
    assert_eq!(fence_problems(fine), Vec::<String>::new());
    assert_eq!(
        fence_problems("```\nopen"),
        ["line 1: a code fence that is never closed"]
    );
}
