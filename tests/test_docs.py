"""The front page and the docs: README.md is a front page of at most 150
lines, and no Markdown page cites an issue number (a reader cannot follow
one: the text says what was measured). Markdown anchors (`(#a-section)`)
and HTML entities (`&#8212;`) are not issue numbers."""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISSUE = re.compile(r"(?<![\w&/])#\d+\b")
PAGES = [os.path.join(ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "*.md")))


def test_the_readme_is_a_front_page():
  with open(os.path.join(ROOT, "README.md")) as f:
    lines = f.read().splitlines()
  assert len(lines) <= 150, len(lines)


def test_no_page_cites_an_issue_number():
  found = []
  for path in PAGES:
    with open(path) as f:
      for i, line in enumerate(f, 1):
        found += [f"{os.path.relpath(path, ROOT)}:{i}: {m}"
                  for m in ISSUE.findall(line)]
  assert found == []


def test_the_issue_rule_sees_issues_not_anchors():
  assert ISSUE.findall("as #15 showed; see (#the-study) and &#8212;") == \
      ["#15"]


def test_every_relative_link_resolves():
  link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
  missing = []
  for path in PAGES:
    with open(path) as f:
      for target in link.findall(f.read()):
        if "://" in target:
          continue
        if not os.path.exists(os.path.join(os.path.dirname(path), target)):
          missing.append(f"{os.path.relpath(path, ROOT)} -> {target}")
  assert missing == []
