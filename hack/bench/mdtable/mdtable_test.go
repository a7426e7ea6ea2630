package mdtable

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMarkdown(t *testing.T) {
	tb := Table{Header: []string{"case", "time"}}
	tb.AddRow("a|b", "1 s\n2 s")
	tb.AddRow("short")
	require.Equal(t, "| case | time |\n| --- | --- |\n| a\\|b | 1 s<br>2 s |\n| short |  |\n", tb.Markdown())
}

func TestText(t *testing.T) {
	tb := Table{Header: []string{"case", "eager"}}
	tb.AddRow("all cached", "12.1")
	tb.AddRow("link", "9", "dropped")
	require.Equal(t, ""+
		"case        eager\n"+
		"----------  -----\n"+
		"all cached  12.1\n"+
		"link        9\n", tb.Text())
}
