#!/usr/bin/env python3
"""A minimal, independent fake GitHub for the polling CPU benchmark (benches/poll_cpu.rs).

It runs in its own process so that its CPU is not counted with the daemon's, and it shares no
code with the daemon or with modules/github-sandbox: it follows the contract a well-behaved
GitHub client relies on, nothing more.

- `GET /repos/{owner}/{repo}`: the repository (push permission, so the preflight passes).
- `GET /repos/{owner}/{repo}/pulls`: the open pull requests (`pull-request-simple`, about 22 KB
  each, built from GitHub's own OpenAPI example in shared/fixtures/github-rest).
- `GET /repos/{owner}/{repo}/issues` and `/issues/comments`: with `since` (inclusive on
  `updated_at`), `sort=updated` and `direction` (asc or desc).
- Every answer carries an `ETag` (a hash of the body) and GitHub's rate-limit headers; a
  matching `If-None-Match` is answered `304 Not Modified` without a body and does not count
  against the quota (as on GitHub). Every answer is sent after `--delay-ms` (10 ms).
- HTTP/1.1 with keep-alive, as GitHub's API.

Control routes (not GitHub's): `GET /_fake/stats` (requests, 304s, counted requests, also per
path prefix), `POST /_fake/clear` (resets the counters), `POST /_fake/touch?repo=o/r&what=issue`
(or `what=comment`): one change, the first issue or comment of that repository updated now.

Prints `listening on PORT` on stdout once it accepts connections.
"""

import argparse
import copy
import hashlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def rewrite_urls(value, base):
    """Points every https://api.github.com URL of a fixture at this server."""
    text = json.dumps(value)
    text = text.replace("https://api.github.com", base)
    return json.loads(text)


class World:
    def __init__(self, fixtures, repos, prs, base):
        load = lambda name: json.load(open(os.path.join(fixtures, name)))
        self.repo_template = rewrite_urls(load("GET_repos_owner_repo.json"), base)
        self.pull_template = rewrite_urls(load("GET_repos_owner_repo_pulls.json")[0], base)
        self.issue_template = rewrite_urls(load("GET_repos_owner_repo_issues.json")[0], base)
        self.comment_template = rewrite_urls(
            load("GET_repos_owner_repo_issues_comments.json")[0], base
        )
        self.base = base
        self.lock = threading.Lock()
        self.version = 0
        self.repos = {}
        start = time.time() - 86400
        for r in range(repos):
            full = f"bench/repo-{r:04d}"
            self.repos[full] = self.make_repo(full, r, prs, start)
        self.bodies = {}  # (path, query, version) -> (etag, bytes)
        self.stats = {"requests": 0, "not_modified": 0, "counted": 0, "by_listing": {}}

    def make_repo(self, full, index, prs, start):
        owner, name = full.split("/")
        repo = copy.deepcopy(self.repo_template)
        repo.update(
            {
                "id": 100000 + index,
                "name": name,
                "full_name": full,
                "url": f"{self.base}/repos/{full}",
                "permissions": {
                    "admin": False,
                    "maintain": False,
                    "push": True,
                    "triage": True,
                    "pull": True,
                },
            }
        )
        repo["owner"]["login"] = owner
        pulls, issues, comments = [], [], []
        for p in range(prs):
            number = p + 1
            created = start + index + p
            pull = copy.deepcopy(self.pull_template)
            pull.update(
                {
                    "id": index * 1000 + number,
                    "number": number,
                    "title": f"Change {number}",
                    "state": "open",
                    "draft": False,
                    "created_at": iso(created),
                    "updated_at": iso(created),
                    "url": f"{self.base}/repos/{full}/pulls/{number}",
                }
            )
            pull["head"]["sha"] = hashlib.sha1(f"{full}#{number}".encode()).hexdigest()
            pull["head"]["ref"] = f"branch-{number}"
            for end in ("head", "base"):
                pull[end]["repo"].update({"id": repo["id"], "name": name, "full_name": full})
            pulls.append(pull)
            issue = copy.deepcopy(self.issue_template)
            issue.update(
                {
                    "id": index * 1000 + number,
                    "number": number,
                    "title": f"Change {number}",
                    "state": "open",
                    "created_at": iso(created),
                    "updated_at": iso(created),
                    "url": f"{self.base}/repos/{full}/issues/{number}",
                }
            )
            issues.append(issue)
            comment = copy.deepcopy(self.comment_template)
            comment.update(
                {
                    "id": index * 1000 + number,
                    "body": f"Comment on {number}",
                    "created_at": iso(created),
                    "updated_at": iso(created),
                    "issue_url": f"{self.base}/repos/{full}/issues/{number}",
                    "url": f"{self.base}/repos/{full}/issues/comments/{index * 1000 + number}",
                }
            )
            comments.append(comment)
        return {"repo": repo, "pulls": pulls, "issues": issues, "comments": comments}

    def touch(self, full, what):
        with self.lock:
            items = self.repos[full]["issues" if what == "issue" else "comments"]
            items[0]["updated_at"] = iso(time.time())
            self.version += 1

    def answer(self, path, query):
        """(status, body bytes or None, etag or None, listing name)."""
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "repos":
            return 404, b'{"message":"Not Found"}', None, "other"
        full = f"{parts[1]}/{parts[2]}"
        state = self.repos.get(full)
        if state is None:
            return 404, b'{"message":"Not Found"}', None, "other"
        rest = parts[3:]
        q = parse_qs(query)
        key = (path, query, self.version)
        cached = self.bodies.get(key)
        if cached is not None:
            return 200, cached[1], cached[0], cached[2]
        if rest == []:
            listing, value = "repository", state["repo"]
        elif rest == ["pulls"]:
            listing, value = "pulls", state["pulls"]
        elif rest in (["issues"], ["issues", "comments"]):
            listing = "issues" if rest == ["issues"] else "comments"
            items = state[listing]
            since = q.get("since", [None])[0]
            if since:
                items = [i for i in items if i["updated_at"] >= since]
            desc = q.get("direction", ["asc"])[0] == "desc"
            items = sorted(items, key=lambda i: (i["updated_at"], i["id"]), reverse=desc)
            value = items
        else:
            return 404, b'{"message":"Not Found"}', None, "other"
        body = json.dumps(value).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:40] + '"'
        self.bodies[key] = (etag, body, listing)
        return 200, body, etag, listing


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    world = None
    delay = 0.01

    def log_message(self, *args):
        pass

    def send(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        if status != 304 and body:
            self.wfile.write(body)

    def do_POST(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        q = parse_qs(url.query)
        if url.path == "/_fake/clear":
            with self.world.lock:
                self.world.stats = {
                    "requests": 0,
                    "not_modified": 0,
                    "counted": 0,
                    "by_listing": {},
                }
            return self.send(204, b"")
        if url.path == "/_fake/touch":
            self.world.touch(q["repo"][0], q.get("what", ["issue"])[0])
            return self.send(204, b"")
        self.send(404, b'{"message":"Not Found"}')

    def do_GET(self):
        url = urlsplit(self.path)
        world = self.world
        if url.path == "/_fake/stats":
            with world.lock:
                body = json.dumps(world.stats).encode()
            return self.send(200, body)
        time.sleep(self.delay)
        with world.lock:
            status, body, etag, listing = world.answer(url.path, url.query)
            not_modified = (
                status == 200
                and etag is not None
                and etag
                in [t.strip().removeprefix("W/") for t in self.headers.get("If-None-Match", "").split(",")]
            )
            stats = world.stats
            stats["requests"] += 1
            per = stats["by_listing"].setdefault(
                listing, {"requests": 0, "not_modified": 0, "counted": 0}
            )
            per["requests"] += 1
            if not_modified:
                stats["not_modified"] += 1
                per["not_modified"] += 1
            else:
                stats["counted"] += 1
                per["counted"] += 1
            used = stats["counted"]
        headers = [
            ("X-RateLimit-Limit", "1000000"),
            ("X-RateLimit-Remaining", str(max(0, 1000000 - used))),
            ("X-RateLimit-Used", str(used)),
            ("X-RateLimit-Reset", str(int(time.time()) + 3600)),
            ("X-RateLimit-Resource", "core"),
        ]
        if etag:
            headers.append(("ETag", etag))
        self.send(304 if not_modified else status, body, headers)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--repos", type=int, default=200)
    ap.add_argument("--prs", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument(
        "--fixtures",
        default=os.path.join(here, "..", "..", "shared", "fixtures", "github-rest"),
    )
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    Handler.world = World(args.fixtures, args.repos, args.prs, f"http://127.0.0.1:{port}")
    Handler.delay = args.delay_ms / 1000.0
    print(f"listening on {port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
