// Package docscheck holds only tests: they keep README.md a short front page
// and every relative link in README.md and docs/*.md pointing at a file and,
// with an #anchor, at a heading that exist.
package docscheck
