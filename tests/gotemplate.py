"""Go's text/template, the engine of Ollama's Modelfile TEMPLATE, run from a test: `go run`
of a small program (Debian golang-go); the test is skipped where Go is not installed."""

import json
import shutil
import subprocess

import pytest


def go_render(template: str, messages: list[dict], tmp_path) -> str:
    """`template` executed by Go with `.Messages` = `messages` (Role, Content), as Ollama
    does for a chat request."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (Debian golang-go): Ollama's templates are Go templates")
    program = tmp_path / "render.go"
    program.write_text(GO_PROGRAM)
    (tmp_path / "template.txt").write_text(template)
    (tmp_path / "messages.json").write_text(json.dumps(messages, ensure_ascii=False))
    done = subprocess.run(
        [go, "run", str(program), str(tmp_path / "template.txt"), str(tmp_path / "messages.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"GOCACHE": str(tmp_path / "gocache"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


GO_PROGRAM = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	text, _ := os.ReadFile(os.Args[1])
	raw, _ := os.ReadFile(os.Args[2])
	var messages []Message
	if err := json.Unmarshal(raw, &messages); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("modelfile").Parse(string(text)))
	if err := tmpl.Execute(os.Stdout, map[string]any{"Messages": messages}); err != nil {
		panic(err)
	}
}
"""
