"""`coverid`: the command-line entry point (declared in pyproject.toml). Parses, calls, prints.

The service's commands (serve, ingest, identify) import only what they need: `coverid identify`
starts in a fraction of a second, and `coverid serve` runs where only the service is installed
(the image: no training extra). The model commands (export, embed, corpus, train, evaluate,
distil, examples, demo-audio) are in app/model_commands.py, loaded only when one of them, or the
full help, is asked for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.console import progress_line
from app.settings import SettingsInvalid, get_settings

SERVICE_COMMANDS = ("serve", "ingest", "identify")
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3"}


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.http_protocol import protocol_with_deadlines

    settings = get_settings()
    # one worker: the extractor and the index live in the process (see README, "Scaling")
    uvicorn.run("app.main:app", host=args.host, port=args.port, log_level=settings.log_level,
                http=protocol_with_deadlines(settings.header_timeout_s, settings.body_timeout_s))
    return 0


def _client(args: argparse.Namespace, timeout: float):
    import httpx

    settings = get_settings()
    key = args.api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    return httpx.Client(base_url=args.url or settings.url, timeout=timeout,
                        headers={"Authorization": f"Bearer {key}"} if key else {})


def _cmd_ingest(args: argparse.Namespace) -> int:
    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        print(f"error: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) under {args.folder}", file=sys.stderr)
        return 2
    report = progress_line("ingesting")
    failed = 0
    with _client(args, timeout=300) as client:
        for done, path in enumerate(files, 1):
            fields = {"track_id": path.stem if args.ids_from_names else None, "title": path.stem}
            response = client.post("/catalog", files={"file": (path.name, path.read_bytes())},
                                   data={k: v for k, v in fields.items() if v}, params={"replace": str(args.replace).lower()})
            if response.status_code != 201:
                failed += 1
                print(f"\nskipped {path}: {response.status_code} {_detail(response)}", file=sys.stderr)
            report(done, len(files), failed)
    print(f"{len(files) - failed} of {len(files)} files catalogued")
    return 0 if failed == 0 else 1


def _cmd_identify(args: argparse.Namespace) -> int:
    route, params = ("/identify/segments", {}) if args.segments else ("/identify", {"top_k": args.top_k})
    with _client(args, timeout=600 if args.segments else 120) as client:
        response = client.post(route, files={"file": (args.file.name, args.file.read_bytes())}, params=params)
    if response.status_code != 200:
        print(f"error: {response.status_code} {_detail(response)}", file=sys.stderr)
        return 2
    body = response.json()
    print(f"{args.file}: {body['query_duration_s']:.1f} s, {body['n_segments']} segments, "
          f"{body['timings_ms']['total']:.0f} ms")
    if args.segments:
        for span in body["spans"]:
            found = "no match" if span["track_id"] is None else \
                f"{span['track_id']}  {span['title'] or ''}  score {span['score']:.3f}{_decision(span)}"
            print(f"{span['start_s']:>8.1f} - {span['end_s']:>8.1f} s  {found}")
        return 0
    for rank, match in enumerate(body["matches"], 1):
        print(f"{rank:>3}. {match['track_id']}  {match['title'] or ''}  score {match['score']:.3f}{_decision(match)}  "
              f"clip {match['query_start_s']:.0f} s ~ track {match['reference_start_s']:.0f} s")
    return 0


def _decision(found: dict) -> str:
    if found.get("is_match") is None:
        return ""
    confidence = "" if found.get("confidence") is None else f" (confidence {found['confidence']:.3f})"
    return f"  {'MATCH' if found['is_match'] else 'no match'}{confidence}"


def _detail(response) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:200]


def _add_service_commands(commands) -> None:
    serve = commands.add_parser("serve", help="run the HTTP service (settings from COVERID_* variables)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_cmd_serve)

    ingest = commands.add_parser("ingest", help="catalogue every audio file under a folder through the service")
    ingest.add_argument("folder", type=Path)
    ingest.add_argument("--url", help="the service (default: COVERID_URL, else http://127.0.0.1:8000)")
    ingest.add_argument("--api-key", help="default: COVERID_API_KEY")
    ingest.add_argument("--ids-from-names", action="store_true", help="track_id = file name without extension")
    ingest.add_argument("--replace", action="store_true")
    ingest.set_defaults(run=_cmd_ingest)

    ident = commands.add_parser("identify", help="ask the service which catalogue tracks a clip covers")
    ident.add_argument("file", type=Path)
    ident.add_argument("--url", help="the service (default: COVERID_URL, else http://127.0.0.1:8000)")
    ident.add_argument("--api-key", help="default: COVERID_API_KEY")
    ident.add_argument("--top-k", type=int, default=5)
    ident.add_argument("--segments", action="store_true",
                       help="a long upload of several works (a set list, a mix): the works it plays, span by span")
    ident.set_defaults(run=_cmd_identify)


def build_parser(model_commands: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coverid", description="Cover song identification for short clips")
    commands = parser.add_subparsers(dest="command", required=True)
    if model_commands:
        from app.model_commands import add_model_commands

        add_model_commands(commands)
    _add_service_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    service_only = bool(argv) and argv[0] in SERVICE_COMMANDS
    args = build_parser(model_commands=not service_only).parse_args(argv)
    user_errors: tuple = (SettingsInvalid,)
    if not service_only:
        from app.model_commands import USER_ERRORS

        user_errors += USER_ERRORS
    if args.command in ("ingest", "identify"):
        import httpx

        user_errors += (httpx.TransportError,)  # the service cannot be reached
    try:
        return args.run(args)
    except (OSError, *user_errors) as err:  # OSError: a file that cannot be read
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
