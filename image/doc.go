// Package image holds the tests of our BuildKit images (image/Dockerfile,
// built by `make image`): they load the images into a dockerd of their own
// and run them as users do, with docker run, buildctl-daemonless.sh and
// buildx's docker-container driver.
//
// It is a module of its own so that Docker is never a requirement of the
// root module's tests.
package image
