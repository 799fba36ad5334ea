#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Compares libipl's ABI with the committed baseline (tests/abi/ipl.abi).

  abi_check.py compare --abidiff A --baseline B --headers-dir D --library L
      Runs abidiff baseline vs the built library. Passes when nothing changed
      or when the only changes are additions (printed); fails on anything
      removed or changed.
  abi_check.py selftest --abidiff A --baseline B --header H --map M
                        --workdir W -- CXX [CXX args...]
      Proves the comparison can fail: builds small stand-in libraries from
      edited copies of the header (a parameter type changed, a function
      removed, ...) and checks that each incompatible one is refused, and
      that an unedited one and a pure addition pass.

Why not just abidiff's exit status: abidiff sets bit 8
(ABIDIFF_ABI_INCOMPATIBLE_CHANGE) only for removed symbols. A changed
parameter or return type only sets bit 4 (ABIDIFF_ABI_CHANGE), as an added
function does. So bit 4 passes only when abidiff's summary counts nothing
removed and nothing changed.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

ABIDIFF_ERROR = 1
ABIDIFF_USAGE_ERROR = 2
ABIDIFF_ABI_CHANGE = 4
ABIDIFF_ABI_INCOMPATIBLE_CHANGE = 8


def run_abidiff(abidiff, baseline, library, headers_dir):
    # --fail-no-debug-info: without DWARF abidiff would compare symbol names
    # only and miss every type change.
    command = [abidiff, '--fail-no-debug-info', '--headers-dir2', headers_dir,
               baseline, library]
    result = subprocess.run(command, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def judge(returncode, report):
    """(passed, reason) for one abidiff run."""
    if returncode & (ABIDIFF_ERROR | ABIDIFF_USAGE_ERROR):
        return False, f'abidiff failed (exit status {returncode})'
    if returncode & ABIDIFF_ABI_INCOMPATIBLE_CHANGE:
        return False, 'abidiff: incompatible ABI change (something was removed)'
    if returncode == 0:
        return True, 'no ABI change'
    if returncode != ABIDIFF_ABI_CHANGE:
        return False, f'abidiff: unexpected exit status {returncode}'
    summaries = [line for line in report.splitlines() if 'changes summary:' in line]
    if not summaries:
        return False, 'abidiff reported a change but no summary this script understands'
    for line in summaries:
        for count, _kind in re.findall(r'(\d+) (Removed|Changed)', line):
            if int(count) != 0:
                return False, f'ABI change that is not an addition: "{line.strip()}"'
    for marker in ('SONAME changed', 'architecture changed'):
        if marker in report:
            return False, f'ABI change that is not an addition: {marker}'
    return True, 'compatible change: additions only (update the baseline to record them)'


def check_baseline_complete(baseline):
    """Every exported function of the baseline must carry its signature;
    a symbol without one would escape the type comparison."""
    corpus = ET.parse(baseline).getroot()
    symbols = {s.get('name') for s in corpus.iter('elf-symbol')}
    declared = {d.get('elf-symbol-id').split('@')[0]
                for d in corpus.iter('function-decl') if d.get('elf-symbol-id')}
    problems = []
    if not symbols:
        problems.append('no exported symbol')
    if symbols - declared:
        problems.append('symbols without a function declaration (regenerate it '
                        'with scripts/update-abi-baseline, from an -O0 build): '
                        + ', '.join(sorted(symbols - declared)))
    if list(corpus.iter('elf-variable-symbols')):
        problems.append('exported variables (the ABI has functions only)')
    return corpus.get('soname'), problems


def compare(args):
    _, problems = check_baseline_complete(args.baseline)
    if problems:
        print(f'{args.baseline}: ' + '; '.join(problems))
        return 1
    returncode, report = run_abidiff(args.abidiff, args.baseline, args.library,
                                     args.headers_dir)
    passed, reason = judge(returncode, report)
    if report.strip():
        print(report.rstrip())
    print(('PASS: ' if passed else 'FAIL: ') + reason)
    if not passed:
        print('If this change is intended, it breaks the ABI promise: see the '
              'README (ABI policy) before regenerating the baseline.')
    return 0 if passed else 1


# ---- selftest --------------------------------------------------------------

def stub_source(header_text):
    """A C++ file defining every IPL_API function of the header with an empty
    body, so its DWARF has exactly the header's signatures."""
    text = re.sub(r'/\*.*?\*/', '', header_text, flags=re.S)
    text = re.sub(r'^\s*#(?:[^\n]*\\\n)*[^\n]*', '', text, flags=re.M)
    lines = ['#include <ipl/ipl.h>']
    for ret, name, params in re.findall(
            r'\bIPL_API\s+([^;(]*?)\b(\w+)\s*\(([^)]*)\)\s*;', text):
        body = '' if ret.strip() == 'void' else ' return 0; '
        lines.append(f'{ret.strip()} {name}({" ".join(params.split())}) {{{body}}}')
    return '\n'.join(lines) + '\n'


def replace_once(text, old, new, what):
    if text.count(old) != 1:
        raise LookupError(f'{what}: expected exactly one "{old}"; the file changed, '
                          'update the variant in abi_check.py')
    return text.replace(old, new)


def variants(header, version_script):
    """(name, expected_to_pass, header text, version script text)."""
    new_node = ('\nIPL_SELFTEST_2 {\n  global:\n    ipl_selftest_added;\n'
                '} IPL_1;\n')
    return [
        # The unedited stand-in must be accepted, or the refusals below could
        # come from the stand-in method rather than from the edits.
        ('unchanged header', True, header, version_script),
        ('a function added in a new version node', True,
         replace_once(header, 'IPL_API int ipl_wait_signal(void);',
                      'IPL_API int ipl_wait_signal(void);\n'
                      'IPL_API int ipl_selftest_added(int value);', 'ipl.h'),
         version_script + new_node),
        ('ipl_acquire timeout_ms narrowed from int64_t to int32_t', False,
         replace_once(header, 'IPL_API int ipl_acquire(ipl_lock *lock, int64_t timeout_ms);',
                      'IPL_API int ipl_acquire(ipl_lock *lock, int32_t timeout_ms);', 'ipl.h'),
         version_script),
        ('ipl_strerror returns int instead of const char *', False,
         replace_once(header, 'IPL_API const char *ipl_strerror(int status);',
                      'IPL_API int ipl_strerror(int status);', 'ipl.h'),
         version_script),
        ('ipl_open gains a parameter', False,
         replace_once(header,
                      'IPL_API int ipl_open(const char *path, uint32_t flags, ipl_lock **out);',
                      'IPL_API int ipl_open(const char *path, uint32_t flags, ipl_lock **out,'
                      ' int mode);', 'ipl.h'),
         version_script),
        ('ipl_release_write removed', False,
         replace_once(header, 'IPL_API int ipl_release_write(ipl_lock *lock);', '', 'ipl.h'),
         replace_once(version_script, 'ipl_release_write;', '', 'ipl.map')),
    ]


def build_stub(cxx, workdir, soname, header_text, version_script_text):
    include_dir = os.path.join(workdir, 'include', 'ipl')
    os.makedirs(include_dir)
    with open(os.path.join(include_dir, 'ipl.h'), 'w') as f:
        f.write(header_text)
    map_path = os.path.join(workdir, 'ipl.map')
    with open(map_path, 'w') as f:
        f.write(version_script_text)
    source = os.path.join(workdir, 'stub.cpp')
    with open(source, 'w') as f:
        f.write(stub_source(header_text))
    library = os.path.join(workdir, soname)
    # -O0: every function keeps its own DWARF entry (see update-abi-baseline).
    subprocess.run(cxx + ['-std=c++17', '-shared', '-fPIC', '-g', '-O0',
                          '-fvisibility=hidden', '-I', os.path.join(workdir, 'include'),
                          '-Wl,--version-script=' + map_path, '-Wl,-soname,' + soname,
                          source, '-o', library], check=True)
    return library, include_dir


def selftest(args):
    if not args.cxx:
        print('selftest: no C++ compiler given after --')
        return 2
    soname, problems = check_baseline_complete(args.baseline)
    if problems:
        print(f'{args.baseline}: ' + '; '.join(problems))
        return 1
    header = open(args.header).read()
    version_script = open(args.map).read()
    try:
        cases = variants(header, version_script)
    except LookupError as error:
        print(error)
        return 1
    failures = 0
    with tempfile.TemporaryDirectory(prefix='abi-selftest-', dir=args.workdir) as tmp:
        for index, (name, expected_pass, header_text, map_text) in enumerate(cases):
            library, include_dir = build_stub(args.cxx, os.path.join(tmp, str(index)),
                                              soname, header_text, map_text)
            returncode, report = run_abidiff(args.abidiff, args.baseline, library,
                                             include_dir)
            passed, reason = judge(returncode, report)
            ok = passed == expected_pass
            failures += not ok
            print(f'{"ok  " if ok else "BAD "} {name}: '
                  f'{"accepted" if passed else "refused"} ({reason}; '
                  f'abidiff exit {returncode})')
            if report.strip():
                print('    ' + report.rstrip().replace('\n', '\n    '))
    if failures:
        print(f'{failures} variant(s) judged wrongly: the ABI check cannot be trusted')
        return 1
    print('every incompatible variant was refused; compatible ones were accepted')
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='mode', required=True)
    cmp_parser = sub.add_parser('compare')
    cmp_parser.add_argument('--abidiff', required=True)
    cmp_parser.add_argument('--baseline', required=True)
    cmp_parser.add_argument('--headers-dir', required=True)
    cmp_parser.add_argument('--library', required=True)
    self_parser = sub.add_parser('selftest')
    self_parser.add_argument('--abidiff', required=True)
    self_parser.add_argument('--baseline', required=True)
    self_parser.add_argument('--header', required=True)
    self_parser.add_argument('--map', required=True)
    self_parser.add_argument('--workdir', required=True)
    self_parser.add_argument('cxx', nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.mode == 'compare':
        return compare(args)
    if args.cxx[:1] == ['--']:
        args.cxx = args.cxx[1:]
    return selftest(args)


if __name__ == '__main__':
    sys.exit(main())
