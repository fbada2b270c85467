"""The numbers of one bench invocation: per-run values of every measurement, notes, problems.

Values are stored per run so that ratios can be computed side by side within a run and the
report can show every run next to the median.
"""

import json

from common import median


class Results:
    def __init__(self, runs):
        self.runs = runs
        self.values = {}    # metric id -> [value or None per run]
        self.notes = {}     # metric id -> why a value is missing (first reason wins)
        self.problems = []  # product behaviour that looked wrong (wrong bytes, hangs...)
        self.meta = {}      # machine, versions, sizes, timings
        self.stage_notes = {}  # stage name -> "not run: reason"

    def put(self, mid, run, value):
        self.values.setdefault(mid, [None] * self.runs)[run] = value

    def fail(self, mid, run, reason):
        self.values.setdefault(mid, [None] * self.runs)
        self.notes.setdefault(mid, f"run {run + 1}: {reason}")

    def get(self, mid, run):
        vals = self.values.get(mid)
        return None if vals is None else vals[run]

    def med(self, mid):
        return median(self.values.get(mid, []))

    def problem(self, text):
        if text not in self.problems:
            self.problems.append(text)

    def to_json(self):
        return {"runs": self.runs, "values": self.values, "notes": self.notes,
                "problems": self.problems, "meta": self.meta, "stage_notes": self.stage_notes}

    @classmethod
    def from_json(cls, data):
        r = cls(data["runs"])
        r.values = data["values"]
        r.notes = data["notes"]
        r.problems = data["problems"]
        r.meta = data["meta"]
        r.stage_notes = data.get("stage_notes", {})
        return r

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)
