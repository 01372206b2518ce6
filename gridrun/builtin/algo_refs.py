# mypy: ignore-errors
"""Reference solutions for ``builtin:algo``, written as the plain, untyped code a small model should learn.

Their source text is the training target; calling them produces the expected test answers.
"""


def eval_rpn(tokens):
    st = []
    for t in tokens:
        if t in "+-*":
            b, a = st.pop(), st.pop()
            st.append(a + b if t == "+" else a - b if t == "-" else a * b)
        else:
            st.append(int(t))
    return st[-1]


def fizzbuzz(n):
    out = []
    for i in range(1, n + 1):
        out.append("FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else "Buzz" if i % 5 == 0 else str(i))
    return out


def reverse_string(s):
    return s[::-1]


def is_palindrome(s):
    return s == s[::-1]


def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def binary_search(xs, target):
    lo, hi = 0, len(xs) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if xs[mid] == target:
            return mid
        if xs[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


def two_sum(xs, target):
    seen = {}
    for i, x in enumerate(xs):
        if target - x in seen:
            return [seen[target - x], i]
        seen[x] = i
    return []


def max_subarray(xs):
    best = cur = xs[0]
    for x in xs[1:]:
        cur = max(x, cur + x)
        best = max(best, cur)
    return best


def remove_duplicates(xs):
    out = []
    for x in xs:
        if x not in out:
            out.append(x)
    return out


def balanced(s):
    pairs, st = {")": "(", "]": "[", "}": "{"}, []
    for ch in s:
        if ch in "([{":
            st.append(ch)
        elif ch in pairs and (not st or st.pop() != pairs[ch]):
            return False
    return not st


def evaluate(expr):
    return int(eval(expr, {"__builtins__": {}}))
