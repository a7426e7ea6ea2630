package scenario

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCountExtractions(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Extractions
	}{
		{name: "none", in: "#1 [internal] load build definition from Dockerfile\n#1 DONE 0.0s\n#5 CACHED\n"},
		{
			name: "start and done of one layer, done of another",
			in: "#5 [1/3] FROM 127.0.0.1:5000/base:latest\n" +
				"#5 extracting sha256:aaaa 0.1s\n" +
				"#5 extracting sha256:aaaa 2.3s done\n" +
				"#5 extracting sha256:bbbb 0.4s done\n" +
				"#5 DONE 2.8s\n",
			want: Extractions{Lines: 3, Layers: 2},
		},
		{name: "pulls are not extractions", in: "#5 sha256:cccc 12.00MB / 12.00MB 0.3s done\n", want: Extractions{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CountExtractions(strings.NewReader(tt.in))
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}
