"""The YAML boundary: a config or queries file is read with bounded size, depth and alias expansion,
duplicate keys refused, anchors and merge keys kept, and every problem named with its file and line
(``load_yaml``, ``read_yaml_file``)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..secrets import printable, unpaired_surrogate
from .base import CONFIG_TOO_MANY, PATH_SHOWN, YAML_MAX_BYTES, YAML_MAX_DEPTH, YAML_MAX_VALUES

# ---------------------------------------------------------------- the YAML boundary


class YAMLRefused(yaml.YAMLError):
    """A YAML document this kit will not read (duplicate key, alias bomb, recursion, too deep), at
    ``mark`` or, when it names several places itself, at ``where``."""

    def __init__(self, problem: str, mark: yaml.Mark | None = None, where: str | None = None) -> None:
        super().__init__(problem)
        self.problem, self.mark, self.where = problem, mark, where


class _Unreadable(YAMLRefused):
    """A scalar no constructor can convert (a date 2020-13-45): as text, a --set value is still a string."""


class KitLoader(yaml.SafeLoader):
    """yaml.SafeLoader, bounded: nesting deeper than YAML_MAX_DEPTH is refused while composing (PyYAML's
    composer recurses, and a deep enough document ended in RecursionError), so is a document of more than
    YAML_MAX_VALUES values (read no further), and a value that a
    constructor cannot convert (a date 2020-13-45, a 5000-digit integer, ``!!float abc``) is a YAML
    error with its line instead of a bare ValueError. Used through ``load_yaml`` only, which also
    refuses duplicate keys, recursive aliases and alias bombs before anything is constructed."""

    def __init__(self, stream: str, max_values: int = YAML_MAX_VALUES, too_many: str = CONFIG_TOO_MANY) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self.max_values, self.too_many = max_values, too_many

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise YAMLRefused(f"nested more than {YAML_MAX_DEPTH} levels deep", self.peek_event().start_mark)
            if self._nodes > self.max_values:  # stop reading early: PyYAML reads ~15,000 values a second
                raise YAMLRefused(self.too_many.format(limit=self.max_values), self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as err:
            shown = f" {printable(node.value, 60)!r}" if isinstance(node, yaml.ScalarNode) else ""
            reason = "an integer of more than 4300 digits" if "digits" in str(err) else printable(err, 100)
            raise _Unreadable(f"cannot read the value{shown}: {reason}. Quote it if it is meant as text, or "
                              "correct it", node.start_mark) from None


def load_yaml(text: str, source: str, lines: bool = True, lenient: bool = False, max_values: int = YAML_MAX_VALUES,
              too_many: str = CONFIG_TOO_MANY) -> tuple[Any, dict[tuple, int]]:
    """The one way the kit reads YAML (config files, --set values, the sample-queries file): safe tags
    only, and refused with ConfigError, naming ``source`` (and the line when ``lines``): invalid YAML,
    duplicate keys at any depth, recursive aliases, and documents that expand to more than
    YAML_MAX_VALUES values or YAML_MAX_DEPTH levels (alias bombs). Returns the data and the line of
    each key path. ``lenient`` (--set values): text that is not valid YAML is returned as a string.
    ``max_values`` and ``too_many`` (a message with {limit}): the bound on values for this kind of file."""

    def where(mark: yaml.Mark | None) -> str:
        return f"{source}:{mark.line + 1}" if lines and mark is not None else source

    loader = None
    try:
        loader = KitLoader(text, max_values, too_many)  # the reader refuses non-printable characters here already
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _check_tree(node, source, lines, max_values)
        data = loader.construct_document(node)
    except YAMLRefused as err:
        if lenient and isinstance(err, _Unreadable):
            return text, {}
        raise ConfigError(f"{err.where or where(err.mark)}: {err.problem}.") from None
    except (yaml.YAMLError, RecursionError) as err:
        if lenient and not isinstance(err, RecursionError):
            return text, {}
        raise _unreadable_yaml(err, source, where) from None
    finally:
        if loader is not None:
            loader.dispose()
    found: dict[tuple, int] = {}
    _line_numbers(node, (), found)
    return data, found


def _unreadable_yaml(err: BaseException, source: str, where: Any) -> ConfigError:
    """The one message for YAML the reader could not turn into plain data, at the line where it failed."""
    if isinstance(err, RecursionError):  # a last guard: the depth limit should make this unreachable
        return ConfigError(f"{source}: nested too deeply to read.")
    if isinstance(err, yaml.constructor.ConstructorError):  # valid YAML, but not plain data
        problem = str(getattr(err, "problem", None) or err)
        if "could not determine a constructor" in problem:
            problem = (f"{printable(problem.rsplit(' ', 1)[-1], 80)} is not allowed: the kit reads plain YAML "
                       "(no !!python/... or custom tags)")
        elif "unhashable" in problem:
            problem = "a key must be a plain value (a name, a number), not a list or mapping"
        return ConfigError(f"{where(getattr(err, 'problem_mark', None))}: {printable(problem)}.")
    mark = getattr(err, "problem_mark", None)
    if isinstance(err, yaml.composer.ComposerError) and "single document" in str(err.context):
        return ConfigError(f"{where(mark)}: a second YAML document starts here, at a '---' line; the kit reads one "
                           "document per file. Keep one: put all the settings in the first document and remove the "
                           "'---' line between them.")
    problem = getattr(err, "problem", None) or str(err)
    return ConfigError(f"{where(mark)}: invalid YAML: {printable(problem)}. Check indentation and quoting there.")


def _check_tree(root: yaml.Node, source: str, lines: bool, max_values: int = YAML_MAX_VALUES) -> None:
    """Walk the composed document as construction would, aliases expanded, within a budget: refuse a
    node inside itself (a recursive alias such as ``a: &a [*a]``), more than YAML_MAX_VALUES values
    or YAML_MAX_DEPTH levels (an alias bomb), and a key given twice in one mapping (the second would
    silently replace the first: a second ``training:`` drops the settings of the first)."""
    budget = max_values
    on_path: set[int] = set()
    checked: set[int] = set()
    stack: list[tuple[yaml.Node, tuple, bool]] = [(root, (), False)]
    while stack:
        node, path, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        if id(node) in on_path:
            raise YAMLRefused("an alias refers to a value that contains it (a recursive alias)", node.start_mark)
        budget -= 1
        if budget < 0:
            raise YAMLRefused(f"the document expands to more than {max_values:,} values (aliases * repeat "
                              "what their anchor & holds); write the values out instead", node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            if unpaired_surrogate(node.value):
                raise YAMLRefused("a value holds half of a UTF-16 surrogate pair (a \\ud800-\\udfff escape "
                                  "alone), text that no tokenizer can read; write the character itself, or remove "
                                  "the escape", node.start_mark)
            continue
        if len(on_path) >= YAML_MAX_DEPTH:
            raise YAMLRefused(f"nested more than {YAML_MAX_DEPTH} levels deep once aliases are expanded",
                              node.start_mark)
        on_path.add(id(node))
        stack.append((node, path, True))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, path + (i,), False) for i, item in reversed(list(enumerate(node.value))))
            continue
        if id(node) not in checked:
            checked.add(id(node))
            _refuse_duplicate_keys(node, path, source, lines)
        for key_node, value_node in reversed(node.value):
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            stack.append((value_node, path + (key,), False))
            stack.append((key_node, path, False))


def _refuse_duplicate_keys(node: yaml.MappingNode, path: tuple, source: str, lines: bool) -> None:
    first: dict[tuple, yaml.Node] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue  # '<<: *base' merges: keys given next to it override the merged ones, as YAML says
        ident = (key_node.tag, key_node.value)
        if ident not in first:
            first[ident] = key_node
            continue
        line1, line2 = first[ident].start_mark.line + 1, key_node.start_mark.line + 1
        dotted = printable(".".join(str(p) for p in path + (key_node.value,)), 100)
        raise YAMLRefused(f"duplicate key '{dotted}': the second would silently replace the first. Keep one of "
                          "them (or merge the two into one)",
                          where=f"{source}:{line1} and {source}:{line2}" if lines else source)


def read_yaml_file(path: Path, what: str, **limits: Any) -> tuple[Any, dict[tuple, int]]:
    """A YAML file through ``load_yaml``: a regular file of at most YAML_MAX_BYTES (checked before reading,
    and at most that much + 1 byte read, in case it grows), UTF-8 text. ``what`` names it in messages
    ('Config file', 'generation.queries_file'); ``limits``: max_values and too_many for load_yaml."""
    shown = printable(path, PATH_SHOWN)
    too_big = (f"{what} {shown}: over {YAML_MAX_BYTES // 2**20} MiB; the kit reads YAML files of at most "
               f"{YAML_MAX_BYTES // 2**20} MiB. Is it the right file?")
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{what} {shown}: is a directory, expected a YAML file.")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {shown}: is not a regular file, expected a YAML file.")
        if info.st_size > YAML_MAX_BYTES:
            raise ConfigError(too_big)
        with open(path, "rb") as handle:
            blob = handle.read(YAML_MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{what} {shown}: cannot read it: {err.strerror}.") from None
    except ValueError:  # an embedded NUL
        raise ConfigError(f"{what} {shown}: a file name with control characters.") from None
    if len(blob) > YAML_MAX_BYTES:
        raise ConfigError(too_big)
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {shown} is not UTF-8 text: is it a YAML file?") from None
    return load_yaml(text, shown, **limits)


def _line_numbers(node: yaml.Node | None, prefix: tuple, found: dict[tuple, int]) -> None:
    """Map each key path in a composed YAML document (checked by _check_tree) to its 1-based line."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            path = prefix + (key_node.value,)
            found[path] = key_node.start_mark.line + 1
            _line_numbers(value_node, path, found)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = prefix + (index,)
            found[path] = item.start_mark.line + 1
            _line_numbers(item, path, found)
