package importer

import "os"

// OSFile exposes the local file so format readers can find its holes
// (SEEK_DATA/SEEK_HOLE) instead of reading them.
func (s *localSource) OSFile() *os.File { return s.f }
