#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The exported symbols of libipl.so equal the version script and the header.

Three lists must name the same functions:
  - the dynamic symbol table of the built shared library (readelf), each
    symbol with its version node (ipl_open@@IPL_1);
  - the globals of the version script capi/ipl.map, each in its node;
  - the functions the public header declares with IPL_API.

Catches: a leaked internal symbol (visibility or the version script lost, a
C++ template instance exported as a weak symbol), an IPL_API dropped from a
definition, a function added to the header but not to the map (or the other
way round), a symbol bound to the wrong node, an exported variable.

Usage: check_symbols.py --readelf READELF --library LIB --map MAP --header H
Exits 1 with a diff when the lists differ.
"""
import argparse
import re
import subprocess
import sys


def exported_symbols(readelf, library):
    """{name: (version, type)} of the defined global/weak dynamic symbols."""
    listing = subprocess.run([readelf, '--dyn-syms', '--wide', library],
                             check=True, capture_output=True, text=True).stdout
    symbols = {}
    for line in listing.splitlines():
        # Num: Value Size Type Bind Vis Ndx Name
        fields = line.split()
        if len(fields) < 8 or not fields[0].endswith(':') or fields[0] == 'Num:':
            continue
        sym_type, bind, ndx, name = fields[3], fields[4], fields[6], fields[7]
        if ndx == 'UND' or bind not in ('GLOBAL', 'WEAK', 'GNU_UNIQUE'):
            continue
        if ndx == 'ABS' and sym_type == 'OBJECT' and '@' not in name:
            continue  # the version node's own marker symbol (IPL_1)
        if '@@' in name:
            name, version = name.split('@@', 1)
        elif '@' in name:
            # A non-default version (name@NODE) would be a compat symbol;
            # libipl has none, so it shows up in the diff.
            name, version = name.split('@', 1)
            version = '(non-default) ' + version
        else:
            version = '(no version)'
        symbols[name] = (version, sym_type)
    return symbols


def version_script_globals(path):
    """{name: node} of the version script, and the nodes' local patterns."""
    text = re.sub(r'/\*.*?\*/', '', open(path).read(), flags=re.S)
    text = re.sub(r'#.*', '', text)
    globals_by_name = {}
    locals_by_node = {}
    for node, body in re.findall(r'(\w+)\s*\{(.*?)\}\s*\w*\s*;', text, flags=re.S):
        section = None
        for item in re.split(r'[;\s]+', body):
            if not item:
                continue
            if item in ('global:', 'local:'):
                section = item[:-1]
            elif section == 'global':
                if item in globals_by_name:
                    sys.exit(f'{path}: {item} is listed twice')
                globals_by_name[item] = node
            elif section == 'local':
                locals_by_node.setdefault(node, []).append(item)
    return globals_by_name, locals_by_node


def header_functions(path):
    """Names of the functions the header declares with IPL_API."""
    text = open(path).read()
    text = re.sub(r'/\*.*?\*/', '', text, flags=re.S)
    text = re.sub(r'//[^\n]*', '', text)
    text = re.sub(r'^\s*#(?:[^\n]*\\\n)*[^\n]*', '', text, flags=re.M)  # directives
    return set(re.findall(r'\bIPL_API\b[^;(]*?\b(\w+)\s*\(', text))


def compare(exported, mapped, local_patterns, declared, map_name, header_name):
    """Lines describing every disagreement; empty when the lists agree."""
    problems = []
    if not mapped:
        problems.append(f'{map_name}: no global symbols found (parse error?)')
    if not declared:
        problems.append(f'{header_name}: no IPL_API functions found (parse error?)')
    if ['*'] not in local_patterns.values():
        problems.append(f'{map_name}: no node ends with "local: *;", '
                        'so internal symbols could leak')

    def listing(title, names):
        if names:
            problems.append(title)
            problems.extend('    ' + name for name in sorted(names))

    exported_pairs = {f'{name}@@{version}' for name, (version, _) in exported.items()}
    mapped_pairs = {f'{name}@@{node}' for name, node in mapped.items()}
    listing('exported by the library but not in the version script (or in another node):',
            exported_pairs - mapped_pairs)
    listing('in the version script but not exported by the library (or in another node):',
            mapped_pairs - exported_pairs)
    listing('exported symbols that are not functions (the ABI has functions only):',
            {f'{name} ({sym_type})' for name, (_, sym_type) in exported.items()
             if sym_type not in ('FUNC', 'IFUNC')})
    listing(f'declared IPL_API in {header_name} but not in the version script:',
            declared - set(mapped))
    listing(f'in the version script but not declared IPL_API in {header_name}:',
            set(mapped) - declared)
    return problems


def selftest(exported, mapped, local_patterns, declared):
    """The comparison must notice each kind of drift (else it proves nothing).
    Returns the names of the drifts it missed."""
    some_name = sorted(mapped)[0]
    leaked = dict(exported)
    leaked['_ZN3ipl6detail9lock_file7acquireEv'] = ('IPL_1', 'FUNC')
    missing = {k: v for k, v in exported.items() if k != some_name}
    wrong_node = dict(exported)
    wrong_node[some_name] = ('IPL_2', 'FUNC')
    variable = dict(exported)
    variable['ipl_some_variable'] = ('IPL_1', 'OBJECT')
    mapped_variable = dict(mapped, ipl_some_variable='IPL_1')
    drifts = {
        'a leaked internal symbol': (leaked, mapped, local_patterns, declared),
        'an IPL_API function not exported': (missing, mapped, local_patterns, declared),
        'a symbol in the wrong version node': (wrong_node, mapped, local_patterns, declared),
        'an exported variable': (variable, mapped_variable, local_patterns,
                                 declared | {'ipl_some_variable'}),
        'a header function missing from the map and library':
            (exported, mapped, local_patterns, declared | {'ipl_new_function'}),
        'a map entry missing from the header':
            (exported, mapped, local_patterns, declared - {some_name}),
        'a version script without "local: *"': (exported, mapped, {}, declared),
    }
    return [name for name, lists in drifts.items() if not compare(*lists, 'map', 'header')]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--readelf', required=True)
    parser.add_argument('--library', required=True)
    parser.add_argument('--map', required=True)
    parser.add_argument('--header', required=True)
    args = parser.parse_args()

    exported = exported_symbols(args.readelf, args.library)
    mapped, local_patterns = version_script_globals(args.map)
    declared = header_functions(args.header)

    problems = compare(exported, mapped, local_patterns, declared, args.map, args.header)
    if problems:
        print('\n'.join(problems))
        return 1
    missed = selftest(exported, mapped, local_patterns, declared)
    if missed:
        print('the comparison failed to notice: ' + ', '.join(missed))
        return 1
    print(f'{len(exported)} exported functions; {args.library}, {args.map} and '
          f'{args.header} agree:')
    for name in sorted(exported):
        print(f'    {name}@@{exported[name][0]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
