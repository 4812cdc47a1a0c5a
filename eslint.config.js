import neostandard from 'neostandard'

export default [
  ...neostandard({
    ts: true,
    ignores: ['dist/**', 'node_modules/**', 'coverage/**', '.tap/**', '.scratch/**']
  }),
  {
    // `const X = {...} as const` with `type X` beside it is how this project spells enums
    // (erasableSyntaxOnly forbids real ones); TypeScript itself catches true redeclarations.
    rules: { '@typescript-eslint/no-redeclare': 'off' }
  }
]
