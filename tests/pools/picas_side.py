"""The picas client's side of the interop tests and the benchmark; runs in .deps/picas-venv, not in ours.

    python picas_side.py URL DATABASE add N            tokens as picas's create_tokens example makes them
    python picas_side.py URL DATABASE views DESIGN     the PiCaS example views, stored by couchdb-python
    python picas_side.py URL DATABASE counts           rows of the todo, locked, done and error views
    python picas_side.py URL DATABASE lock N           N todo tokens locked as a RunActor claims them
    python picas_side.py URL DATABASE run LOG -- ARGV  a RunActor pilot: ARGV per token ({id}, {input})

PICAS_USER and PICAS_PASSWORD in the environment give the credentials. `run` appends the id of every
token it executes to LOG (one line each, before the command runs), so duplicates can be counted.
"""

from __future__ import annotations

import json
import os
import sys

from couchdb.design import ViewDefinition
from picas.actors import RunActor
from picas.clients import CouchDB
from picas.documents import Task
from picas.executers import execute
from picas.iterators import TaskViewIterator
from picas.modifiers import BasicTokenModifier

# The view function and conditions of the PiCaS examples (examples/create_views.py), as data.
VIEW_CODE = """
function(doc) {{
   if(doc.type == "token") {{
    if({condition}) {{
      emit(doc._id, doc._id);
    }}
  }}
}}
"""
OVERVIEW_CODE = """
function(doc) {{
   if(doc.type == "token") {{
       if ({todo}){{
          emit('todo', 1);
       }}
       if({locked}) {{
          emit('locked', 1);
       }}
       if({done}) {{
          emit('done', 1);
       }}
       if({error}) {{
          emit('error', 1);
       }}
   }}
}}
"""
REDUCE_CODE = """
function (key, values, rereduce) {
   return sum(values);
}
"""
CONDITIONS = {
    "todo": "doc.lock == 0 && doc.done == 0",
    "locked": "doc.lock > 0 && doc.done == 0",
    "done": "doc.lock > 0 && doc.done > 0 && parseInt(doc.exit_code) == 0",
    "error": "doc.lock > 0 && doc.done > 0 && parseInt(doc.exit_code) != 0",
}


class CommandActor(RunActor):
    """The RunActor of the PiCaS local example: run a command per token, close it, attach the logs."""

    def __init__(self, db: CouchDB, argv: list[str], log: str) -> None:
        super().__init__(db)
        self.argv = argv
        self.log = log
        self.modifier = BasicTokenModifier()

    def process_task(self, token: Task) -> None:
        with open(self.log, "a") as log:  # noqa: PTH123 - this script runs with the picas client
            log.write(token["_id"] + "\n")
        values = {"id": token["_id"], "input": token["input"] if "input" in token else ""}  # noqa: SIM401
        argv = [word.format(**values) for word in self.argv]
        process, code, out, err = execute(argv)
        self.subprocess = process
        token["exit_code"] = code
        self.modifier.close(token)
        token.put_attachment(f"logs_{token['_id']}.out", out)
        token.put_attachment(f"logs_{token['_id']}.err", err)


def main(argv: list[str]) -> int:
    url, database, command, *rest = argv
    client = CouchDB(
        url=url,
        db=database,
        username=os.environ.get("PICAS_USER"),
        password=os.environ.get("PICAS_PASSWORD", ""),
    )
    if command == "add":
        count = int(rest[0])
        tokens = [
            Task({"_id": f"token_{i}", "type": "token", "input": f"picas input {i}"}) for i in range(count)
        ]
        client.save_documents(tokens)
    elif command == "views":
        design = rest[0]
        for name, condition in CONDITIONS.items():
            ViewDefinition(design, name, VIEW_CODE.format(condition=condition)).sync(client.db)
        overview = OVERVIEW_CODE.format(**CONDITIONS)
        ViewDefinition(design, "overview_total", overview, REDUCE_CODE).sync(client.db)
    elif command == "counts":
        counts = {name: len(client.view(name).rows) for name in CONDITIONS}
        print(json.dumps(counts))
    elif command == "lock":
        claims = TaskViewIterator(client, "todo")
        for _ in range(int(rest[0])):
            next(claims)
    elif command == "run":
        log, separator, *command_argv = rest
        assert separator == "--", "usage: run LOG -- ARGV"
        CommandActor(client, command_argv, log).run()
    else:
        raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
