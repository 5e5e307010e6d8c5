// Package traces defines Loupe's capture bundle, format v1: the manifest that
// commits a capture, the schemas of its parts (Parquet tables, a pprof CPU
// profile, Kineto traces as produced, JSON-lines fault records), the object key
// layout in the store, and the findings stored beside a capture.
//
// The agent writes bundles and the aggregator reads them; they meet only here.
// This package imports nothing else of Loupe's.
//
// A bundle is a set of parts plus manifest.json. The manifest is written last
// and lists every part with its size and SHA-256, so a reader that finds a
// manifest can trust that every part it names was complete when it was written.
//
// Parquet tables describe themselves (schema.go): a row type embeds Identity
// first (cluster, job, run, capture, host) and has a rank column; WriteTable
// fills the identity, and any identify method of the row type, from the
// bundle's manifest, and writes the schema version and table name as
// key-value metadata. A new table follows the same pattern and gets all of
// this from WriteTable, with no writer setting it by hand.
package traces
